package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The file store's log: what a crash can leave, what damage looks like,
// and compaction seen from another process.

// putN writes keys k0..k(n-1) with value v, one CAS each.
func putN(t testing.TB, s Store, n int, v string) {
	t.Helper()
	for i := range n {
		k := "k" + strconv.Itoa(i)
		kv, err := s.Get(t.Context(), k)
		if err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		if _, err := s.CAS(t.Context(), Op{Key: k, Rev: kv.Rev, Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
}

func mustGet(t testing.TB, s Store, key string) KV {
	t.Helper()
	kv, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	return kv
}

// smallLog makes new logs 4 KiB long for the rest of the test, so that
// every prefix of one can be tried.
func smallLog(t *testing.T) {
	old := compactAt
	compactAt = 4096
	t.Cleanup(func() { compactAt = old })
}

// entriesEnd returns the offset where the entries of the log buf end.
func entriesEnd(t *testing.T, buf []byte) int {
	starts := entryStarts(t, buf)
	return starts[len(starts)-1]
}

// entryStarts returns the offsets of the entries of the log buf, and
// where they end.
func entryStarts(t *testing.T, buf []byte) []int {
	t.Helper()
	off := logHeader
	starts := []int{off}
	for {
		n, _, ok := decodeEntryHeader(buf[off:])
		if !ok {
			return starts
		}
		off += entryOverhead + int(n)
		starts = append(starts, off)
	}
}

// TestFileStore_logTornTail: a write that a crash cut short (any part of
// its entry on disk, the rest still zeros; it was never acknowledged)
// loads without it, unless its records are there whole (only the trailer
// is missing); the next write clears it and goes on.
func TestFileStore_logTornTail(t *testing.T) {
	dir := t.TempDir()
	s := openFile(t, dir)
	putN(t, s, 3, "a")
	logPath := filepath.Join(dir, logFile)
	full, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	before, err := s.CAS(t.Context(), Op{Key: "last", Value: []byte("not acknowledged")})
	if err != nil {
		t.Fatal(err)
	}
	withLast, _ := os.ReadFile(logPath)
	s.Close()
	start, end := entriesEnd(t, full), entriesEnd(t, withLast)
	if end <= start || len(withLast) != len(full) {
		t.Fatalf("the CAS did not add an entry (entries end at %d, then %d; %d bytes, then %d)", start, end, len(full), len(withLast))
	}

	// Written in order, cut anywhere; or a sector of it never written.
	type tornWrite struct {
		log   []byte
		whole bool // its records are all there
	}
	torn := map[string]tornWrite{}
	for cut := start + 1; cut < end; cut++ {
		b := bytes.Clone(withLast)
		clear(b[cut:end])
		torn[fmt.Sprint("first ", cut-start, " bytes")] = tornWrite{b, cut >= end-entryHeader}
	}
	b := bytes.Clone(withLast)
	clear(b[start : start+entryHeader])
	clear(b[end-entryHeader : end])
	torn["header and trailer missing"] = tornWrite{log: b}
	for name, tw := range torn {
		t.Run(name, func(t *testing.T) {
			b := tw.log
			if err := os.WriteFile(logPath, b, 0o600); err != nil {
				t.Fatal(err)
			}
			s := openFile(t, dir)
			want := before
			if _, err := s.Get(t.Context(), "last"); tw.whole {
				if err != nil {
					t.Fatalf("the entry with its records whole was dropped: %v", err)
				}
				want++
			} else if !errors.Is(err, ErrNotFound) {
				t.Fatalf("the torn entry was applied: %v", err)
			}
			if got := string(mustGet(t, s, "k2").Value); got != "a" {
				t.Fatalf("k2 = %q", got)
			}
			// Reading leaves the file alone; the next write clears it.
			if now, _ := os.ReadFile(logPath); !bytes.Equal(now, b) {
				t.Fatal("a read changed the log")
			}
			rev, err := s.CAS(t.Context(), Op{Key: "next", Value: []byte("b")})
			if err != nil {
				t.Fatal(err)
			}
			if rev != want {
				t.Errorf("revision %d after the torn write, want %d", rev, want)
			}
			s.Close()
			s2 := openFile(t, dir)
			if got := string(mustGet(t, s2, "next").Value); got != "b" {
				t.Errorf("after reopening: next = %q", got)
			}
		})
	}
}

// TestFileStore_logCorrupt: damage to the log (a changed byte anywhere, an
// entry missing, a bad header, the log of another store, a log cut short
// or emptied) is a *CorruptError naming the file; so is a log without
// its snapshot and a snapshot without its log. The files are left as
// they are.
func TestFileStore_logCorrupt(t *testing.T) {
	dir := t.TempDir()
	s := openFile(t, dir)
	putN(t, s, 1, "value")
	if _, err := s.CAS(t.Context(), Op{Key: "big", Value: make([]byte, compactAt)}); err != nil {
		t.Fatal(err) // a compaction: a snapshot, then a new log
	}
	putN(t, s, 4, "value")
	s.Close()
	logPath, snapPath := filepath.Join(dir, logFile), filepath.Join(dir, stateFile)
	good, _ := os.ReadFile(logPath)
	snap, _ := os.ReadFile(snapPath)
	starts := entryStarts(t, good)
	second, third, last, end := starts[1], starts[2], starts[len(starts)-2], starts[len(starts)-1]

	zero := func(b []byte, i, j int) []byte {
		b = bytes.Clone(b)
		clear(b[i:j])
		return b
	}
	flip := func(b []byte, i int) []byte {
		b = bytes.Clone(b)
		b[i] ^= 0x10
		return b
	}
	// The second entry taken out: the third follows the first.
	gap := append(bytes.Clone(good[:second]), good[third:]...)
	gap = append(gap, make([]byte, len(good)-len(gap))...)
	id, _, size, _ := decodeLogHeader(good)
	other := append(encodeLogHeader(12345, 1, size), good[logHeader:]...)
	ahead := append(encodeLogHeader(id, 1000, size), good[logHeader:]...)
	cases := map[string]struct {
		log  []byte
		file string
	}{
		"one bit, a middle entry":                 {flip(good, second+entryHeader+2), logPath},
		"one bit, the last entry":                 {flip(good, end-entryHeader-1), logPath},
		"one bit, the last header":                {flip(good, last+2), logPath},
		"one bit, a length":                       {flip(good, logHeader+6), logPath},
		"an entry missing":                        {gap, logPath},
		"header":                                  {flip(good, 9), logPath},
		"header only half there":                  {good[:logHeader/2], logPath},
		"empty":                                   {nil, logPath},
		"cut where the entries end":               {good[:end], logPath},
		"cut after the entries":                   {good[:len(good)-1], logPath},
		"extended":                                {append(bytes.Clone(good), 0), logPath},
		"another store's log":                     {other, logPath},
		"the last header gone, its trailer there": {zero(good, last, last+entryHeader), logPath},
		"ahead of the snapshot":                   {ahead, logPath},
		"a byte after the entries, valid":         {append(append(bytes.Clone(good[:end]), sealEntry(appendRecord(newEntry(), 99, []Op{{Key: "x"}}))...), good[end+entryOverhead+13:]...), logPath},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(logPath, c.log, 0o600); err != nil {
				t.Fatal(err)
			}
			var ce *CorruptError
			if _, err := OpenFileStore(dir); !errors.As(err, &ce) || ce.File != c.file {
				t.Fatalf("OpenFileStore: err = %v, want *CorruptError naming %s", err, c.file)
			}
			if now, _ := os.ReadFile(logPath); !bytes.Equal(now, c.log) {
				t.Error("the damaged log was changed")
			}
		})
	}

	os.WriteFile(logPath, good, 0o600)
	os.Remove(snapPath)
	var ce *CorruptError
	if _, err := OpenFileStore(dir); !errors.As(err, &ce) || ce.File != snapPath {
		t.Fatalf("a log without its snapshot: err = %v, want *CorruptError naming %s", err, snapPath)
	}
	os.WriteFile(snapPath, snap, 0o600)
	os.Remove(logPath)
	if _, err := OpenFileStore(dir); !errors.As(err, &ce) || ce.File != logPath {
		t.Fatalf("a snapshot without its log: err = %v, want *CorruptError naming %s", err, logPath)
	}
	os.WriteFile(logPath, good, 0o600)
	r := openFile(t, dir)
	if got := string(mustGet(t, r, "k3").Value); got != "value" {
		t.Errorf("repaired: k3 = %q", got)
	}
	// The same log as a new file (copied back by hand): an open store reads
	// it again from the start.
	os.WriteFile(logPath+".new", good, 0o600)
	os.Rename(logPath+".new", logPath)
	if got := string(mustGet(t, r, "k3").Value); got != "value" {
		t.Errorf("after the log was replaced: k3 = %q", got)
	}
}

// TestFileStore_damage: every prefix of the snapshot and of the log, and
// 1,000 single-byte changes anywhere in them, of a store holding
// acknowledged allocations: either every acknowledged allocation is there,
// or the store reports a *CorruptError. Never a silent loss.
func TestFileStore_damage(t *testing.T) {
	smallLog(t)
	dir := t.TempDir()
	a, _ := New(openFile(t, dir), Config{})
	mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.74.0.0/16")}}})
	acked := map[string]string{}
	// Until the log holds a good many entries after a compaction.
	for i := 0; i < 40 || entriesEnd(t, readFile(t, filepath.Join(dir, logFile))) < 1500; i++ {
		owner := fmt.Sprint("c", i)
		acked[owner] = mustAlloc(t, a, "n", owner).IPv4.Addr.Addr().String()
		if i%7 == 3 {
			if err := a.Release(t.Context(), "n", owner); err != nil {
				t.Fatal(err)
			}
			delete(acked, owner)
		}
	}
	files := map[string][]byte{}
	for _, name := range []string{stateFile, logFile} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%s: %v (the test wants both files)", name, err)
		}
		files[name] = b
	}
	t.Logf("%d allocations; snapshot %d bytes, log %d bytes, entries at %v", len(acked), len(files[stateFile]), len(files[logFile]), entryStarts(t, files[logFile]))

	corrupt, intact := 0, 0
	try := func(what string, name string, b []byte) {
		d := t.TempDir()
		for n, f := range files {
			if n == name {
				f = b
			}
			if err := os.WriteFile(filepath.Join(d, n), f, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		s, err := OpenFileStore(d)
		if err == nil {
			defer s.Close()
			var als []Allocation
			b, _ := New(s, Config{})
			_, als, err = b.Inspect(t.Context(), "n")
			if err == nil {
				held := map[string]string{}
				for _, al := range als {
					held[al.Owner] = al.IPv4.Addr.Addr().String()
				}
				for owner, ad := range acked {
					if held[owner] != ad {
						t.Errorf("%s of %s: acknowledged %s for %s, the store has %q, and no error", what, name, ad, owner, held[owner])
						return
					}
				}
				intact++
				return
			}
		}
		var ce *CorruptError
		if !errors.As(err, &ce) {
			t.Errorf("%s of %s: err = %v, want a *CorruptError", what, name, err)
		}
		corrupt++
	}
	for _, name := range []string{stateFile, logFile} {
		for n := range len(files[name]) {
			try(fmt.Sprint("a prefix of ", n, " bytes"), name, files[name][:n])
		}
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	size := len(files[stateFile]) + len(files[logFile])
	for range 1000 {
		i, name := rnd.IntN(size), stateFile
		if i >= len(files[stateFile]) {
			i, name = i-len(files[stateFile]), logFile
		}
		b := bytes.Clone(files[name])
		b[i] ^= byte(1 + rnd.IntN(255))
		try(fmt.Sprint("a byte changed at ", i), name, b)
	}
	t.Logf("%d damaged copies reported corrupt, %d read with every allocation", corrupt, intact)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFileStore_compaction: a write that does not fit in the log is folded
// into a new snapshot; another store on the directory (another process)
// that read before follows, with events for what changed; a crash between
// the new snapshot and the new log (the old log left behind) loses
// nothing.
func TestFileStore_compaction(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	a := openFile(t, dir)
	b := openFile(t, dir)
	putN(t, a, 3, "small")
	if got := string(mustGet(t, b, "k1").Value); got != "small" {
		t.Fatalf("b sees k1 = %q", got)
	}
	w := b.Watch(ctx, "k", mustGet(t, b, "k2").Rev)

	logPath, snapPath := filepath.Join(dir, logFile), filepath.Join(dir, stateFile)
	oldLog, _ := os.ReadFile(logPath)
	big := strings.Repeat("x", int(compactAt))
	if _, err := a.CAS(ctx, Op{Key: "kbig", Value: []byte(big)}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(snapPath); err != nil {
		t.Fatal("no snapshot after writing past the log's size")
	}
	if log, _ := os.ReadFile(logPath); len(log) < len(big) || !allZero(log[logHeader:]) {
		t.Fatalf("the log after compaction: %d bytes, entries end at %d; want as long as the snapshot, no entries", len(log), entriesEnd(t, log))
	}
	newSnap, _ := os.ReadFile(snapPath)
	atCompaction, _, err := a.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	putN(t, a, 2, "after") // into the new log
	for _, k := range []string{"kbig", "k0", "k1", "k2"} {
		if got, want := mustGet(t, b, k), mustGet(t, a, k); !bytes.Equal(got.Value, want.Value) || got.Rev != want.Rev {
			t.Errorf("b after compaction: %s at %d, %d bytes; a has it at %d, %d bytes", k, got.Rev, len(got.Value), want.Rev, len(want.Value))
		}
	}
	seen := map[string]bool{}
	for len(seen) < 3 {
		ev := <-w
		if ev.Err != nil {
			t.Fatal(ev.Err)
		}
		if len(ev.Value) == len(big) || string(ev.Value) == "after" {
			seen[ev.Key] = true
		}
	}

	// A crash after the new snapshot's rename, before the new log's: the
	// old log, whose entries are all in the snapshot, is still there.
	crash := t.TempDir()
	os.WriteFile(filepath.Join(crash, stateFile), newSnap, 0o600)
	os.WriteFile(filepath.Join(crash, logFile), oldLog, 0o600)
	c := openFile(t, crash)
	got, _, err := c.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(atCompaction) {
		t.Fatalf("after the crash: %d keys, want %d", len(got), len(atCompaction))
	}
	for i, want := range atCompaction {
		if got[i].Key != want.Key || got[i].Rev != want.Rev || !bytes.Equal(got[i].Value, want.Value) {
			t.Errorf("after the crash: %s at %d, want %s at %d", got[i].Key, got[i].Rev, want.Key, want.Rev)
		}
	}
	putN(t, c, 1, "later") // and writing goes on
	if got := string(mustGet(t, openFile(t, crash), "k0").Value); got != "later" {
		t.Errorf("k0 = %q", got)
	}
}

// TestFileStore_writeCost: an allocation in a pool holding thousands of
// addresses writes a log entry of the keys it changes, not the pool.
func TestFileStore_writeCost(t *testing.T) {
	dir := t.TempDir()
	s := openFile(t, dir)
	FillPool(t, s, 10) // 6,553 owners
	a, _ := New(s, Config{})
	mustAlloc(t, a, "n", "first") // the pool read, the log perhaps compacted
	logPath := filepath.Join(dir, logFile)
	before := entriesEnd(t, readFile(t, logPath))
	mustAlloc(t, a, "n", "second")
	if err := a.Release(t.Context(), "n", "first"); err != nil {
		t.Fatal(err)
	}
	after := entriesEnd(t, readFile(t, logPath))
	if n := after - before; n <= 0 || n > 400 {
		t.Errorf("an allocation and a release wrote %d bytes to the log, want 1 to 400", n)
	}
}
