package ipam

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The file store's log: what a crash can leave, what damage looks like,
// and compaction seen from another process.

// putN writes keys k0..k(n-1) with value v, one CAS each.
func putN(t *testing.T, s Store, n int, v string) {
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

func mustGet(t *testing.T, s Store, key string) KV {
	t.Helper()
	kv, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	return kv
}

// TestFileStore_logTornTail: a log that ends inside its last record (a
// machine crash during the append, before the fdatasync returned, so the
// change was never acknowledged) loads without it; the next write drops the
// incomplete record and goes on.
func TestFileStore_logTornTail(t *testing.T) {
	dir := t.TempDir()
	s := openFile(t, dir)
	putN(t, s, 3, "a") // the first write makes the snapshot; the others are in the log
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
	if len(withLast) <= len(full) {
		t.Fatalf("the CAS did not append to the log (%d bytes, then %d)", len(full), len(withLast))
	}
	s.Close()

	for _, cut := range []int{1, recHeader - 1, recHeader + 1, len(withLast) - len(full) - 1} {
		t.Run(strconv.Itoa(cut), func(t *testing.T) {
			torn := withLast[:len(full)+cut]
			if err := os.WriteFile(logPath, torn, 0o600); err != nil {
				t.Fatal(err)
			}
			s := openFile(t, dir)
			if _, err := s.Get(t.Context(), "last"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("the incomplete record was applied: %v", err)
			}
			if got := string(mustGet(t, s, "k2").Value); got != "a" {
				t.Fatalf("k2 = %q", got)
			}
			// Reading leaves the file alone; the next write cuts it.
			if now, _ := os.ReadFile(logPath); !bytes.Equal(now, torn) {
				t.Fatal("a read changed the log")
			}
			rev, err := s.CAS(t.Context(), Op{Key: "next", Value: []byte("b")})
			if err != nil {
				t.Fatal(err)
			}
			if rev != before {
				t.Errorf("revision %d after the cut, want %d (the lost record's)", rev, before)
			}
			s.Close()
			s2 := openFile(t, dir)
			if got := string(mustGet(t, s2, "next").Value); got != "b" {
				t.Errorf("after reopening: next = %q", got)
			}
		})
	}
}

// TestFileStore_logCorrupt: a log record that fails its checksum with the
// whole record present, a record out of order, a bad header or the log of
// another store are *CorruptErrors naming the log; so is a log without its
// snapshot. The files are left as they are.
func TestFileStore_logCorrupt(t *testing.T) {
	dir := t.TempDir()
	s := openFile(t, dir)
	putN(t, s, 4, "value")
	s.Close()
	logPath, snapPath := filepath.Join(dir, logFile), filepath.Join(dir, stateFile)
	good, _ := os.ReadFile(logPath)
	snap, _ := os.ReadFile(snapPath)
	_, _, first, err := decodeRecord(good[logHeader:])
	if err != nil {
		t.Fatal(err)
	}

	flip := func(b []byte, i int) []byte {
		b = bytes.Clone(b)
		b[i] ^= 0x10
		return b
	}
	// The second record dropped: the third follows the first.
	_, _, second, _ := decodeRecord(good[logHeader+first:])
	gap := append(bytes.Clone(good[:logHeader+first]), good[logHeader+first+second:]...)
	other := append(encodeLogHeader(12345, 1), good[logHeader:]...)
	id := binary.BigEndian.Uint64(snap[8:])
	ahead := append(encodeLogHeader(id, 1000), good[logHeader:]...)
	cases := map[string]struct {
		log  []byte
		file string
	}{
		"one bit, a middle record": {flip(good, logHeader+first+recHeader+2), logPath},
		"one bit, the last record": {flip(good, len(good)-1), logPath},
		"one bit, a length":        {flip(good, logHeader+3), logPath},
		"a record missing":         {gap, logPath},
		"header":                   {flip(good, 9), logPath},
		"header only half there":   {good[:logHeader/2], logPath},
		"another store's log":      {other, logPath},
		"ahead of the snapshot":    {ahead, logPath},
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

// TestFileStore_compaction: a log past its size limit is folded into a new
// snapshot; another store on the directory (another process) that read
// before follows, with events for what changed; a crash between the new
// snapshot and the new log (the old log left behind) loses nothing.
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
	snap0, _ := os.Stat(snapPath)
	oldLog, _ := os.ReadFile(logPath)
	big := strings.Repeat("x", compactAt)
	if _, err := a.CAS(ctx, Op{Key: "kbig", Value: []byte(big)}); err != nil {
		t.Fatal(err)
	}
	snap1, _ := os.Stat(snapPath)
	if os.SameFile(snap0, snap1) {
		t.Fatal("no new snapshot after writing past compactAt")
	}
	if fi, _ := os.Stat(logPath); fi.Size() != logHeader {
		t.Fatalf("the log is %d bytes after compaction, want only its header", fi.Size())
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
	// old log, whose records are all in the snapshot, is still there.
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
