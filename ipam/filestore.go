package ipam

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// DefaultDir is the directory of the file store when OpenFileStore is given "".
const DefaultDir = "/var/lib/nsnet"

// The file store's files inside its directory.
const (
	stateFile = "store.db"   // a snapshot of the state, replaced as a whole
	logFile   = "store.log"  // the changes after the snapshot, appended to
	tmpSuffix = ".tmp"       // a snapshot or log being written, before its rename
	lockFile  = "store.lock" // flock(2)ed by writers; never replaced
)

// compactAt is the size of a new log, whose entries a write that does not
// fit in it writes into a new snapshot instead, starting a new log; a log
// is as large as the snapshot if that is larger, so that it is replayed in
// at most a few times the snapshot's read time. A variable for tests.
var compactAt int64 = 1 << 20

// stepHook, when a test sets it, is called at each step of a write (named)
// by the goroutine writing, to kill the process there.
var stepHook func(step string)

func step(name string) {
	if stepHook != nil {
		stepHook(name)
	}
}

// FileStore is a Store in one directory, the embedded default on one machine.
//
// The state lives in two files: a log of changes, store.log, and a
// snapshot of the state the log follows, store.db. A CAS writes its
// records (the keys it changes, not the whole state) as an entry of the
// log and fdatasyncs it before it returns, so every change it acknowledges
// is durable. The log is written whole, zeros included, when it is
// started, and entries are written over its zeros: its size never changes,
// and an fdatasync writes the entry's data only. A write that does not fit
// in the log writes a new snapshot (temporary file, fsync, rename, fsync
// of the directory) and starts a new log the same way, so a crash at any
// point leaves the old files or the new ones; a new store starts with a
// log only, so a snapshot without its log is damage. Writers from several
// processes take turns through flock(2) on a lock file; concurrent CAS
// calls in one process share one entry and one fdatasync (group commit).
// Readers need no lock.
//
// Damage is never repaired silently: a snapshot or log that is truncated
// or extended, fails a checksum or does not decode, a log entry that does
// not follow the one before, and anything but zeros after the last entry
// are reported as a *CorruptError naming the file, by OpenFileStore and
// every later call; the store never starts over by itself. The one
// exception is the torn write of a crash: what a write cut short before its
// fdatasync returned leaves after the last entry. It was never
// acknowledged, and it is told from damage by the entries' layout (a
// header and a trailer, each with a checksum covering itself, and the
// payload's checksum): a torn write holds no complete header or trailer,
// while a changed byte leaves the damaged entry's trailer or the next
// entry's header in place. A torn write is dropped, and cleared by the
// next write. (A crash that wrote an entry's trailer to disk but not its
// header is reported as damage too: a false alarm, never a silent loss.)
//
// Watch sees the changes this process makes at once, and those of other
// processes within about 100ms (it polls the files while watches are open).
// Its history starts when the store is opened: a watch from an earlier
// revision gets a *CompactedError.
//
// Measured on a 2-core VM with an ext4 disk, allocate+release through an
// Allocator: see the package documentation. Safe for concurrent use.
type FileStore struct {
	dir     string
	path    string // the snapshot
	logPath string
	lock    *os.File
	dirf    *os.File

	mu     sync.Mutex // guards the fields below and this process's use of the lock
	id     uint64     // the store's random id (in the snapshot and log headers); 0: none yet
	rev    int64
	maxRev int64 // highest revision seen, so revisions never go back
	keys   map[string]KV

	snapRev int64       // the revision of the snapshot read or written last
	snapFi  os.FileInfo // its file: unchanged, it need not be read again
	log     *os.File    // the log file read or written last; nil: none
	logFi   os.FileInfo // its file, to see when another process replaced it
	logOff  int64       // the end of its last entry read or written
	logBase int64       // the revision of the snapshot it follows
	logSize int64       // its size, fixed when it is written
	closed  bool

	group   *group[*casReq]
	hub     *hub
	polling bool
	stop    chan struct{}
}

// OpenFileStore opens the file store in dir, an absolute path ("" means
// DefaultDir; a relative path is a *ValidationError). It creates dir with
// mode 0700 if needed; an existing dir that is a symbolic link is followed
// (an administrator may have put the state elsewhere), but dir itself must
// be owned by the effective user, and a looser mode than 0700 is tightened
// to 0700 (the files inside are 0600), so that no other user can plant or
// read files there. The store's files are opened without following
// symbolic links and created with O_EXCL: a symbolic link or file planted
// at a temporary file's name is removed (the link, never its target), and
// one planted at the lock file, the snapshot or the log is refused.
//
// It reads the snapshot and the log, so damage is reported here, as a
// *CorruptError. Close it when done.
func OpenFileStore(dir string) (*FileStore, error) {
	if dir == "" {
		dir = DefaultDir
	}
	if !filepath.IsAbs(dir) {
		return nil, invalid("dir", dir, "must be an absolute path")
	}
	dir = filepath.Clean(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ipam: open file store: %w", err)
	}
	dirf, err := openDir(dir)
	if err != nil {
		return nil, fmt.Errorf("ipam: open file store %s: %w", dir, err)
	}
	lock, err := openPrivate(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE)
	if err != nil {
		dirf.Close()
		return nil, fmt.Errorf("ipam: open file store: %w", err)
	}
	s := &FileStore{
		dir:     dir,
		path:    filepath.Join(dir, stateFile),
		logPath: filepath.Join(dir, logFile),
		lock:    lock,
		dirf:    dirf,
		keys:    map[string]KV{},
		group:   newGroup[*casReq](),
		stop:    make(chan struct{}),
	}
	s.mu.Lock()
	err = s.refresh(false)
	s.hub = newHub(s.rev)
	s.mu.Unlock()
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *FileStore) Dir() string { return s.dir }

// Get implements Store.
func (s *FileStore) Get(ctx context.Context, key string) (KV, error) {
	if err := ctx.Err(); err != nil {
		return KV{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.read(); err != nil {
		return KV{}, err
	}
	kv, ok := s.keys[key]
	if !ok {
		return KV{}, ErrNotFound
	}
	return kv, nil
}

// List implements Store.
func (s *FileStore) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.read(); err != nil {
		return nil, 0, err
	}
	var kvs []KV
	for k, kv := range s.keys {
		if strings.HasPrefix(k, prefix) {
			kvs = append(kvs, kv)
		}
	}
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].Key < kvs[j].Key })
	return kvs, s.rev, nil
}

// CAS implements Store. Concurrent calls in one process are written
// together: one log entry and one fdatasync for all of them.
func (s *FileStore) CAS(ctx context.Context, ops ...Op) (int64, error) {
	req := &casReq{ops: ops}
	if _, err := s.group.do(ctx, req, s.commit); err != nil {
		return 0, err
	}
	return req.rev, nil
}

type casReq struct {
	ops []Op
	rev int64 // set by commit
}

// commit applies the calls in order, each at its own revision, and writes
// them as one entry of the log (or, when it is time, a new snapshot). Its
// cost is that of the keys the calls write, not of the store's size.
func (s *FileStore) commit(_ context.Context, calls []*call[*casReq]) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fail := func(err error) {
		for _, c := range calls {
			if c.err == nil {
				c.err = err
			}
		}
	}
	if s.closed {
		fail(ErrClosed)
		return
	}
	if err := flock(s.lock, lockEx); err != nil {
		fail(fmt.Errorf("ipam: lock %s: %w", s.lock.Name(), err))
		return
	}
	defer flock(s.lock, lockUn)
	step("locked")
	if err := s.refresh(true); err != nil {
		fail(err)
		return
	}
	// The revision of a key as the calls before see it: over holds what
	// they wrote (Rev 0: deleted), made only for a batch of several calls.
	var over map[string]int64
	revOf := func(k string) int64 {
		if r, ok := over[k]; ok {
			return r
		}
		return s.keys[k].Rev
	}
	rev := max(s.rev, s.maxRev)
	var evs []Event
	entry := newEntry()
	for i, c := range calls {
		ok := true
		for _, op := range c.req.ops {
			if revOf(op.Key) != op.Rev {
				ok = false
				break
			}
		}
		if !ok {
			c.err = ErrConflict
			continue
		}
		rev++
		c.req.rev = rev
		entry = appendRecord(entry, rev, c.req.ops)
		if over == nil && i < len(calls)-1 {
			over = make(map[string]int64)
		}
		for _, op := range c.req.ops {
			if op.Delete {
				if revOf(op.Key) != 0 {
					evs = append(evs, Event{Key: op.Key, Rev: rev, Delete: true})
				}
			} else {
				evs = append(evs, Event{Key: op.Key, Value: op.Value, Rev: rev})
			}
			if over != nil {
				over[op.Key] = 0
				if !op.Delete {
					over[op.Key] = rev
				}
			}
		}
	}
	if len(entry) == entryHeader {
		return // nothing to write: every call conflicted
	}
	undo := s.apply(evs)
	if err := s.write(rev, sealEntry(entry)); err != nil {
		// What is on disk is unknown: read it again next time. The calls
		// fail, though some may have been written.
		s.undo(undo)
		s.forget()
		fail(err)
		return
	}
	s.rev, s.maxRev = rev, rev
	s.hub.publish(evs)
}

// apply applies evs to the cached keys and returns what they held before.
func (s *FileStore) apply(evs []Event) []KV {
	undo := make([]KV, len(evs))
	for i, ev := range evs {
		undo[i] = s.keys[ev.Key] // Rev 0: absent
		undo[i].Key = ev.Key
		if ev.Delete {
			delete(s.keys, ev.Key)
		} else {
			s.keys[ev.Key] = KV{Key: ev.Key, Value: ev.Value, Rev: ev.Rev}
		}
	}
	return undo
}

// undo undoes apply.
func (s *FileStore) undo(undo []KV) {
	for i := len(undo) - 1; i >= 0; i-- {
		if kv := undo[i]; kv.Rev == 0 {
			delete(s.keys, kv.Key)
		} else {
			s.keys[kv.Key] = kv
		}
	}
}

// write makes the entry, whose records end at revision rev and are applied
// to s.keys already, durable: in the log if it has room and follows the
// state, else as a new snapshot and an empty log.
func (s *FileStore) write(rev int64, entry []byte) error {
	if s.log == nil {
		// No files: a new store (or its files were removed). The log
		// comes first, so that a snapshot is never without its log.
		log, err := s.replace(s.logPath, encodeLogHeader(newStoreID(), 0, compactAt), compactAt)
		if err != nil {
			return err
		}
		if err := s.setLog(log, logHeader); err != nil {
			return err
		}
	}
	if s.rev == s.maxRev && s.logOff+int64(len(entry)) <= s.logSize {
		return s.appendLog(entry)
	}
	// A gap in the revisions (the files were removed), or a full log:
	// write the whole state.
	return s.compact(rev)
}

// appendLog writes an entry after the last one of the log and fdatasyncs
// it. It writes over zeros, inside the file's size: no metadata changes.
func (s *FileStore) appendLog(entry []byte) error {
	if _, err := s.log.WriteAt(entry, s.logOff); err != nil {
		return fmt.Errorf("ipam: write %s: %w", s.logPath, err)
	}
	step("log-written")
	if err := fdatasync(s.log); err != nil {
		return fmt.Errorf("ipam: write %s: %w", s.logPath, err)
	}
	step("log-synced")
	s.logOff += int64(len(entry))
	return nil
}

// compact writes s.keys as the snapshot at rev, then an empty log after
// it. A crash in between leaves the new snapshot and the old log, whose
// records are all at or before rev: the next read skips them.
func (s *FileStore) compact(rev int64) error {
	snapBuf := encodeFile(s.id, rev, s.keys)
	snap, err := s.replace(s.path, snapBuf, 0)
	if err != nil {
		return err
	}
	snapFi, err := snap.Stat()
	snap.Close()
	if err != nil {
		return fmt.Errorf("ipam: write %s: %w", s.path, err)
	}
	// The log may grow as large as the snapshot: it is then read in about
	// the time the snapshot is.
	size := max(compactAt, (int64(len(snapBuf))+4095)&^4095)
	log, err := s.replace(s.logPath, encodeLogHeader(s.id, rev, size), size)
	if err != nil {
		return err
	}
	s.snapRev, s.snapFi = rev, snapFi
	return s.setLog(log, logHeader)
}

// setLog makes the open file log, read up to off, the log.
func (s *FileStore) setLog(log *os.File, off int64) error {
	fi, err := log.Stat()
	if err != nil {
		log.Close()
		return fmt.Errorf("ipam: write %s: %w", s.logPath, err)
	}
	if s.log != nil {
		s.log.Close()
	}
	id, base, size, err := readLogHeader(log)
	if err != nil {
		log.Close()
		s.log = nil
		return &CorruptError{File: s.logPath, Err: err}
	}
	s.id, s.logBase, s.logSize = id, base, size
	s.log, s.logFi, s.logOff = log, fi, off
	return nil
}

// replace replaces the file at path with one holding buf followed by zeros
// up to size: temporary file, fsync, rename, fsync of the directory. It
// returns the new file, open.
func (s *FileStore) replace(path string, buf []byte, size int64) (*os.File, error) {
	tmp := path + tmpSuffix
	f, err := createExcl(tmp)
	if err != nil {
		return nil, fmt.Errorf("ipam: write %s: %w", path, err)
	}
	_, err = f.Write(buf)
	if pad := size - int64(len(buf)); err == nil && pad > 0 {
		// Real zeros, not a hole: the appends that write over them change
		// no metadata, so their fdatasync writes only the data.
		zeros := make([]byte, min(pad, 256<<10))
		for pad > 0 && err == nil {
			var n int
			n, err = f.Write(zeros[:min(pad, int64(len(zeros)))])
			pad -= int64(n)
		}
	}
	if err == nil {
		step("tmp-written")
		err = f.Sync()
	}
	if err == nil {
		step("tmp-synced")
		err = os.Rename(tmp, path)
	}
	if err == nil {
		step("renamed")
		err = s.dirf.Sync()
	}
	if err == nil {
		step("dir-synced")
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("ipam: write %s: %w", path, err)
	}
	return f, nil
}

// forget drops what is known of the files, so the next refresh reads both
// whole. The cached keys stay, for the events of the difference.
func (s *FileStore) forget() {
	if s.log != nil {
		s.log.Close()
	}
	s.log, s.logFi, s.logOff, s.snapFi = nil, nil, 0, nil
}

// read brings the cached state up to date with the files, for a read.
func (s *FileStore) read() error {
	if s.closed {
		return ErrClosed
	}
	return s.refresh(false)
}

// errBusy: a read without the lock met a log entry that does not check
// out; it may be one being written, so the read is done again with the
// lock.
var errBusy = errors.New("ipam: log entry being written")

// errMoved: another process replaced the snapshot or the log while this
// one read them; read again.
var errMoved = errors.New("ipam: files replaced while read")

// refresh reads what other processes wrote since this one last read or
// wrote the files and publishes it to watches. locked says that the caller
// holds the lock exclusively: then the torn tail of a write that a crash
// cut short is cleared. Called with s.mu held.
func (s *FileStore) refresh(locked bool) error {
	err := s.load(locked, locked)
	if !errors.Is(err, errBusy) && !errors.Is(err, errMoved) {
		return err
	}
	// Another process was writing or compacting: read everything again
	// with the lock (shared, if this one does not hold it), so that
	// nothing moves.
	s.forget()
	if !locked {
		if err := flock(s.lock, lockSh); err != nil {
			return fmt.Errorf("ipam: lock %s: %w", s.lock.Name(), err)
		}
		defer flock(s.lock, lockUn)
	}
	return s.load(true, locked)
}

// load reads the snapshot if it changed, then the log from where this
// process left it (all of it, if the snapshot or the log was replaced).
// settled says no writer is at work (the caller holds the lock), so a log
// entry that does not check out is damage or a torn write; cut that a torn
// write may be cleared.
func (s *FileStore) load(settled, cut bool) error {
	snap, err := s.loadSnapshot()
	if err != nil {
		return err
	}
	logf, logFi := s.log, s.logFi
	fi, err := os.Stat(s.logPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		logf, logFi = nil, nil
	case err != nil:
		return fmt.Errorf("ipam: read %s: %w", s.logPath, err)
	case logFi == nil || !os.SameFile(fi, logFi):
		if logf, err = openPrivate(s.logPath, os.O_RDWR); err != nil {
			return fmt.Errorf("ipam: read %s: %w", s.logPath, err)
		}
		logFi = fi
	}
	newLog := logf != s.log
	closeNew := func() {
		if newLog && logf != nil {
			logf.Close()
		}
	}

	base, snapRev, off := &fileState{id: s.id, rev: s.rev, keys: s.keys, fi: s.snapFi}, s.snapRev, s.logOff
	switch {
	case snap != nil:
		base, snapRev, off = snap, snap.rev, 0
	case newLog:
		// Another log after the same snapshot: the cached state is the
		// old log's, so read the snapshot again too.
		closeNew()
		return errMoved
	}
	if logf == nil && base.fi != nil {
		// The log is written before the first snapshot and replaced, never
		// removed: without it, the changes after the snapshot are lost.
		return &CorruptError{File: s.logPath, Err: fmt.Errorf("missing, and the snapshot %s, which it follows, is there", s.path)}
	}
	next, err := s.replay(logf, off, base, snapRev, settled, cut)
	if err != nil {
		closeNew()
		return err
	}
	if newLog {
		if s.log != nil {
			s.log.Close()
		}
		s.log, s.logFi = logf, logFi
	}
	s.logOff, s.logBase, s.logSize = next.off, next.logBase, next.logSize
	var evs []Event
	if snap != nil {
		s.snapFi, s.snapRev = snap.fi, snap.rev
		evs = s.diff(next.keys, next.rev)
	} else {
		evs = next.evs
	}
	s.id, s.rev, s.maxRev, s.keys = next.id, next.rev, max(s.maxRev, next.rev), next.keys
	if s.hub != nil {
		s.hub.publish(evs)
	}
	return nil
}

// fileState is a state read from the files.
type fileState struct {
	id   uint64
	rev  int64
	keys map[string]KV
	fi   os.FileInfo // of the snapshot it was read from; nil: none

	// Set by replay: the end of the last entry read, the log's header,
	// the events of the entries read.
	off, logBase, logSize int64
	evs                   []Event
}

// loadSnapshot reads the snapshot if it is not the one read or written
// last, and returns it (nil: unchanged). No snapshot is an empty store at
// revision 0, to which a log with base 0 (or none) belongs.
func (s *FileStore) loadSnapshot() (*fileState, error) {
	f, err := openPrivate(s.path, os.O_RDONLY)
	if errors.Is(err, fs.ErrNotExist) {
		if s.snapFi == nil && s.log != nil {
			return nil, nil // none before either: the cached state is the log's
		}
		return &fileState{keys: map[string]KV{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ipam: read %s: %w", s.path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("ipam: read %s: %w", s.path, err)
	}
	var head [fileHeader]byte
	n, err := io.ReadFull(f, head[:min(fi.Size(), fileHeader)])
	if err != nil {
		return nil, &CorruptError{File: s.path, Err: fmt.Errorf("short read: %w", err)}
	}
	buf := head[:n]
	// The file read or written last, untouched? Its header says whether
	// it is the same state (inode numbers are reused, and modification
	// times can be coarser than writes), its inode, size and time whether
	// it was changed in place.
	if n == fileHeader && s.snapFi != nil && string(buf[:8]) == fileMagic &&
		binary.BigEndian.Uint64(buf[8:]) == s.id && int64(binary.BigEndian.Uint64(buf[16:])) == s.snapRev &&
		os.SameFile(fi, s.snapFi) && fi.Size() == s.snapFi.Size() && fi.ModTime().Equal(s.snapFi.ModTime()) {
		return nil, nil
	}
	buf = make([]byte, fi.Size())
	copy(buf, head[:n])
	if _, err := io.ReadFull(f, buf[n:]); err != nil {
		return nil, &CorruptError{File: s.path, Err: fmt.Errorf("short read: %w", err)}
	}
	id, rev, keys, err := decodeFile(buf)
	if err != nil {
		return nil, &CorruptError{File: s.path, Err: err}
	}
	return &fileState{id: id, rev: rev, keys: keys, fi: fi}, nil
}

// replay applies the log's entries after off (0: from its header) to base,
// whose snapshot is at snapRev, and returns the new state. base.keys is
// changed in place, and only once every entry read has checked out.
//
// Where the entries end, the rest of the file is zeros. Read from the
// start, the log must be exactly that: valid entries, then zeros. If
// something else follows the last valid entry, it is the torn write of a
// crash only if it holds no complete entry header anywhere (see
// appendEntry): that is dropped, and cleared when cut. Anything else is a
// *CorruptError.
func (s *FileStore) replay(f *os.File, off int64, base *fileState, snapRev int64, settled, cut bool) (*fileState, error) {
	base.off, base.logBase, base.logSize = off, s.logBase, s.logSize
	if f == nil {
		return base, nil
	}
	corrupt := func(err error) error { return &CorruptError{File: s.logPath, Err: err} }
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("ipam: read %s: %w", s.logPath, err)
	}
	full := off == 0
	if full {
		id, logBase, size, err := readLogHeader(f)
		switch {
		case err != nil && !settled:
			return nil, errMoved // perhaps a log being written: read again with the lock
		case err != nil:
			return nil, corrupt(err)
		case base.id != 0 && id != base.id:
			return nil, corrupt(fmt.Errorf("the log of another store (id %x; the snapshot's is %x)", id, base.id))
		case base.fi == nil && logBase != 0 && !settled:
			return nil, errMoved // the snapshot was looked for before a compaction wrote it
		case base.fi == nil && logBase != 0:
			return nil, &CorruptError{File: s.path, Err: fmt.Errorf("missing, and %s, which follows it (revision %d), is there", s.logPath, logBase)}
		case logBase > base.rev && settled:
			return nil, corrupt(fmt.Errorf("follows revision %d, but the snapshot is at %d", logBase, base.rev))
		case logBase > base.rev:
			return nil, errMoved // the snapshot is older than the log: read during a compaction
		}
		base.id, base.logBase, base.logSize, off = id, logBase, size, logHeader
	}
	if fi.Size() != base.logSize {
		return nil, corrupt(fmt.Errorf("%d bytes, its header says %d: truncated or extended", fi.Size(), base.logSize))
	}
	size := base.logSize
	readAt := func(at, n int64) ([]byte, error) {
		b := make([]byte, n)
		if _, err := f.ReadAt(b, at); err != nil {
			return nil, fmt.Errorf("ipam: read %s: %w", s.logPath, err)
		}
		return b, nil
	}

	type record struct {
		rev int64
		ops []Op
	}
	var recs []record
	rev := base.rev
	bad := false // the entry at off does not check out
	for off+entryOverhead <= size {
		h, err := readAt(off, entryHeader)
		if err != nil {
			return nil, err
		}
		if allZero(h) {
			break // the end of the entries
		}
		n, sum, ok := decodeEntryHeader(h)
		if ok && off+entryOverhead+int64(n) > size {
			return nil, corrupt(fmt.Errorf("entry at offset %d: %d bytes long, past the end of the file", off, n))
		}
		var payload []byte
		if ok {
			if payload, err = readAt(off+entryHeader, int64(n)); err != nil {
				return nil, err
			}
			ok = crc32.Checksum(payload, castagnoli) == sum
		}
		if !ok {
			bad = true
			break
		}
		// The entry checks out: each of its records must follow the one
		// before (or be in the snapshot already: a crash during a
		// compaction left the old log).
		at := off
		for len(payload) > 0 {
			r, ops, k, err := decodeRecord(payload)
			if err != nil {
				return nil, corrupt(fmt.Errorf("entry at offset %d: %w", at, err))
			}
			payload = payload[k:]
			if r <= snapRev && r <= rev {
				continue
			}
			if r != rev+1 {
				return nil, corrupt(fmt.Errorf("entry at offset %d: revision %d after %d", at, r, rev))
			}
			rev = r
			recs = append(recs, record{r, ops})
		}
		off += entryOverhead + int64(n)
	}
	// Read from the start, or at an entry that does not check out: what
	// follows must be zeros, or a torn write.
	if (full || bad) && off < size {
		rest, err := readAt(off, size-off)
		if err != nil {
			return nil, err
		}
		if !allZero(rest) {
			if !settled {
				return nil, errBusy // perhaps a write under way
			}
			if hasEntryHeader(rest[1:]) {
				// Not a torn write, which holds no complete header, not
				// even its own trailer: a damaged entry. It, and what
				// follows it, is never dropped.
				return nil, corrupt(fmt.Errorf("damaged entry at offset %d", off))
			}
			// The write a crash cut short, never acknowledged.
			if cut {
				if _, err := f.WriteAt(make([]byte, len(rest)), off); err != nil {
					return nil, fmt.Errorf("ipam: clear the torn last write of %s: %w", s.logPath, err)
				}
				if err := fdatasync(f); err != nil {
					return nil, fmt.Errorf("ipam: clear the torn last write of %s: %w", s.logPath, err)
				}
			}
		}
	}

	st := base
	st.off, st.rev, st.evs = off, rev, nil
	for _, r := range recs {
		for _, op := range r.ops {
			if op.Delete {
				if _, ok := st.keys[op.Key]; ok {
					delete(st.keys, op.Key)
					st.evs = append(st.evs, Event{Key: op.Key, Rev: r.rev, Delete: true})
				}
				continue
			}
			st.keys[op.Key] = KV{Key: op.Key, Value: op.Value, Rev: r.rev}
			st.evs = append(st.evs, Event{Key: op.Key, Value: op.Value, Rev: r.rev})
		}
	}
	return st, nil
}

// diff returns the changes from the cached keys to keys, which another
// process wrote, up to revision rev: one event per changed key.
func (s *FileStore) diff(keys map[string]KV, rev int64) []Event {
	var evs []Event
	for k, kv := range keys {
		if old, ok := s.keys[k]; !ok || old.Rev != kv.Rev {
			evs = append(evs, Event{Key: k, Value: kv.Value, Rev: kv.Rev})
		}
	}
	for k := range s.keys {
		if _, ok := keys[k]; !ok {
			evs = append(evs, Event{Key: k, Rev: rev, Delete: true})
		}
	}
	sort.Slice(evs, func(i, j int) bool {
		if evs[i].Rev != evs[j].Rev {
			return evs[i].Rev < evs[j].Rev
		}
		return evs[i].Key < evs[j].Key
	})
	return evs
}

// Watch implements Store; see FileStore for how it sees other processes.
func (s *FileStore) Watch(ctx context.Context, prefix string, after int64) <-chan Event {
	s.mu.Lock()
	if !s.polling && !s.closed {
		s.polling = true
		go s.poll()
	}
	s.mu.Unlock()
	return s.hub.watch(ctx, prefix, after)
}

// poll reads the files every 100ms while watches are open.
func (s *FileStore) poll() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.hub.mu.Lock()
		n := len(s.hub.watchers)
		s.hub.mu.Unlock()
		s.mu.Lock()
		if n == 0 || s.closed {
			s.polling = false
			s.mu.Unlock()
			return
		}
		s.refresh(false) // errors surface on the next Get, List or CAS
		s.mu.Unlock()
	}
}

// Close implements Store: it closes the store's files. Watches end with
// their contexts.
func (s *FileStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	close(s.stop)
	if s.log != nil {
		s.log.Close()
	}
	s.dirf.Close()
	return s.lock.Close()
}

func newStoreID() uint64 {
	var b [8]byte
	rand.Read(b[:])
	if id := binary.BigEndian.Uint64(b[:]); id != 0 {
		return id
	}
	return 1
}

// The state file:
//
//	magic "nsnetkv1" | id uint64 | rev uint64 | body length uint64 |
//	body: count uvarint, then per key: key, rev uvarint, value
//	(strings and values as uvarint length + bytes) |
//	crc32c of everything before, uint32
//
// all integers big endian.
const (
	fileMagic  = "nsnetkv1"
	fileHeader = 32
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func encodeFile(id uint64, rev int64, keys map[string]KV) []byte {
	size := fileHeader + 4 + binary.MaxVarintLen64
	for k, kv := range keys {
		size += len(k) + len(kv.Value) + 3*binary.MaxVarintLen64
	}
	buf := make([]byte, fileHeader, size)
	copy(buf, fileMagic)
	binary.BigEndian.PutUint64(buf[8:], id)
	binary.BigEndian.PutUint64(buf[16:], uint64(rev))
	buf = binary.AppendUvarint(buf, uint64(len(keys)))
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		kv := keys[k]
		buf = appendBytes(buf, []byte(k))
		buf = binary.AppendUvarint(buf, uint64(kv.Rev))
		buf = appendBytes(buf, kv.Value)
	}
	binary.BigEndian.PutUint64(buf[24:], uint64(len(buf)-fileHeader))
	return binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf, castagnoli))
}

func decodeFile(buf []byte) (id uint64, rev int64, keys map[string]KV, err error) {
	if len(buf) < fileHeader+4 {
		return 0, 0, nil, fmt.Errorf("truncated: %d bytes", len(buf))
	}
	if string(buf[:8]) != fileMagic {
		return 0, 0, nil, fmt.Errorf("not an nsnet state file (magic %q)", buf[:8])
	}
	n := binary.BigEndian.Uint64(buf[24:])
	if want := uint64(fileHeader) + n + 4; want != uint64(len(buf)) {
		return 0, 0, nil, fmt.Errorf("truncated: %d bytes, header says %d", len(buf), want)
	}
	body := buf[:len(buf)-4]
	if sum := binary.BigEndian.Uint32(buf[len(buf)-4:]); sum != crc32.Checksum(body, castagnoli) {
		return 0, 0, nil, errors.New("checksum mismatch")
	}
	id = binary.BigEndian.Uint64(buf[8:])
	rev = int64(binary.BigEndian.Uint64(buf[16:]))
	d := decoder{buf: body[fileHeader:]}
	count := d.uvarint()
	if count > uint64(len(d.buf)) {
		return 0, 0, nil, errors.New("bad key count")
	}
	keys = make(map[string]KV, count)
	for i := uint64(0); i < count && d.err == nil; i++ {
		k := string(d.bytes())
		r := int64(d.uvarint())
		v := d.bytes()
		if d.err == nil && (r <= 0 || r > rev) {
			d.err = fmt.Errorf("key %q at revision %d, after the file's %d", k, r, rev)
		}
		if _, dup := keys[k]; dup && d.err == nil {
			d.err = fmt.Errorf("key %q twice", k)
		}
		keys[k] = KV{Key: k, Value: v, Rev: r}
	}
	if d.err == nil && len(d.buf) != 0 {
		d.err = fmt.Errorf("%d bytes after the last key", len(d.buf))
	}
	if d.err != nil {
		return 0, 0, nil, d.err
	}
	return id, rev, keys, nil
}

// The log:
//
//	header, 40 bytes: magic "nsnetlg2" | store id uint64 | revision of
//	the snapshot it follows uint64 | the file's size uint64 | crc32c of
//	the 32 bytes before, uint32 | 4 zero bytes
//	entries, one per write (the CASes one commit writes), each:
//	    header, 16 bytes: 0xe7 0x4c | 2 zero bytes | payload length
//	    uint32 | crc32c of the payload uint32 | crc32c of the 12 bytes
//	    before uint32
//	    payload: records, each one CAS: revision uvarint, op count
//	    uvarint, per op: 0 (put) or 1 (delete), key, and for a put the
//	    value (as in the state file)
//	    trailer: the header again
//	zeros, to the size the header gives
//
// all integers big endian. The file is written whole, zeros included,
// when the log is started, and entries are written over the zeros: its
// size never changes, so a log that is shorter or longer than its header
// says is damaged (an empty log too), and where the entries end, zeros
// follow. A write that a crash cut short leaves parts of its entry,
// with zeros where the rest was to be: never a complete header that
// checks out (a header by itself, not even its trailer). Damage, a byte
// changed in an entry, leaves one: either the entry checks out whole, or
// one of its header and trailer, or the next entry's, is there. So a
// torn write is told from damage, and the last entry is dropped only when
// it was never acknowledged.
const (
	logMagic      = "nsnetlg2"
	logHeader     = 40
	entryHeader   = 16
	entryOverhead = 2 * entryHeader
)

func encodeLogHeader(id uint64, base, size int64) []byte {
	buf := make([]byte, logHeader)
	copy(buf, logMagic)
	binary.BigEndian.PutUint64(buf[8:], id)
	binary.BigEndian.PutUint64(buf[16:], uint64(base))
	binary.BigEndian.PutUint64(buf[24:], uint64(size))
	binary.BigEndian.PutUint32(buf[32:], crc32.Checksum(buf[:32], castagnoli))
	return buf
}

func decodeLogHeader(buf []byte) (id uint64, base, size int64, err error) {
	switch {
	case len(buf) < logHeader:
		return 0, 0, 0, fmt.Errorf("truncated header: %d bytes", len(buf))
	case string(buf[:8]) != logMagic:
		return 0, 0, 0, fmt.Errorf("not an nsnet log (magic %q)", buf[:8])
	case binary.BigEndian.Uint32(buf[32:]) != crc32.Checksum(buf[:32], castagnoli) || !allZero(buf[36:logHeader]):
		return 0, 0, 0, errors.New("header checksum mismatch")
	}
	size = int64(binary.BigEndian.Uint64(buf[24:]))
	if size < logHeader {
		return 0, 0, 0, fmt.Errorf("bad size %d in the header", size)
	}
	return binary.BigEndian.Uint64(buf[8:]), int64(binary.BigEndian.Uint64(buf[16:])), size, nil
}

// readLogHeader reads and decodes the header of the log f.
func readLogHeader(f *os.File) (id uint64, base, size int64, err error) {
	buf := make([]byte, logHeader)
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		return 0, 0, 0, err
	}
	return decodeLogHeader(buf[:n])
}

// newEntry returns a buffer to append the records of an entry to.
func newEntry() []byte { return make([]byte, entryHeader, 256) }

// sealEntry fills in the header of the entry buf, made by newEntry with
// records appended, and appends its trailer.
func sealEntry(buf []byte) []byte {
	payload := buf[entryHeader:]
	h := buf[:entryHeader]
	h[0], h[1], h[2], h[3] = 0xe7, 0x4c, 0, 0
	binary.BigEndian.PutUint32(h[4:], uint32(len(payload)))
	binary.BigEndian.PutUint32(h[8:], crc32.Checksum(payload, castagnoli))
	binary.BigEndian.PutUint32(h[12:], crc32.Checksum(h[:12], castagnoli))
	return append(buf, h...)
}

// decodeEntryHeader decodes an entry's header (or trailer): the payload's
// length and checksum, and whether it checks out.
func decodeEntryHeader(h []byte) (n, sum uint32, ok bool) {
	if len(h) < entryHeader || h[0] != 0xe7 || h[1] != 0x4c || h[2] != 0 || h[3] != 0 ||
		binary.BigEndian.Uint32(h[12:]) != crc32.Checksum(h[:12], castagnoli) {
		return 0, 0, false
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint32(h[8:]), true
}

// hasEntryHeader reports whether an entry header that checks out starts
// anywhere in b.
func hasEntryHeader(b []byte) bool {
	for i := 0; i+entryHeader <= len(b); i++ {
		if b[i] == 0xe7 && b[i+1] == 0x4c {
			if _, _, ok := decodeEntryHeader(b[i : i+entryHeader]); ok {
				return true
			}
		}
	}
	return false
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.NativeEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// appendRecord appends the record of ops at rev to buf.
func appendRecord(buf []byte, rev int64, ops []Op) []byte {
	buf = binary.AppendUvarint(buf, uint64(rev))
	buf = binary.AppendUvarint(buf, uint64(len(ops)))
	for _, op := range ops {
		if op.Delete {
			buf = append(buf, 1)
			buf = appendString(buf, op.Key)
			continue
		}
		buf = append(buf, 0)
		buf = appendString(buf, op.Key)
		buf = appendBytes(buf, op.Value)
	}
	return buf
}

// decodeRecord decodes the record at the start of buf and returns its
// length.
func decodeRecord(buf []byte) (rev int64, ops []Op, n int, err error) {
	d := decoder{buf: buf}
	rev = int64(d.uvarint())
	count := d.uvarint()
	if d.err == nil && (rev <= 0 || count == 0 || count > uint64(len(d.buf))) {
		return 0, nil, 0, fmt.Errorf("bad revision %d or op count %d", rev, count)
	}
	ops = make([]Op, 0, count)
	for i := uint64(0); i < count && d.err == nil; i++ {
		var op Op
		switch kind := d.byte(); kind {
		case 0:
			op.Key = string(d.bytes())
			op.Value = d.bytes()
		case 1:
			op.Key, op.Delete = string(d.bytes()), true
		default:
			d.err = fmt.Errorf("bad op kind %d", kind)
		}
		ops = append(ops, op)
	}
	if d.err != nil {
		return 0, nil, 0, d.err
	}
	return rev, ops, len(buf) - len(d.buf), nil
}

func appendBytes(buf, b []byte) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(b)))
	return append(buf, b...)
}

// decoder reads what appendBytes and binary.AppendUvarint wrote; the first
// error sticks.
type decoder struct {
	buf []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.err = errors.New("truncated or bad number")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.buf)) {
		d.err = errors.New("truncated value")
		return nil
	}
	b := d.buf[:n:n]
	d.buf = d.buf[n:]
	return b
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) == 0 {
		d.err = errors.New("truncated")
		return 0
	}
	b := d.buf[0]
	d.buf = d.buf[1:]
	return b
}
