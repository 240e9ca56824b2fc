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
	"maps"
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

// compactAt is the log size past which a write also writes a new snapshot
// and starts an empty log, unless the snapshot is larger: the log is then
// replayed in at most a few times the snapshot's read time.
const compactAt = 1 << 20

// FileStore is a Store in one directory, the embedded default on one machine.
//
// The state lives in two files: a snapshot, store.db, and a log of the
// changes made since, store.log. A CAS appends a record to the log and
// fdatasyncs it before it returns, so every change it acknowledges is
// durable. When the log has grown past a megabyte (or the snapshot's size),
// a write also writes a new snapshot (temporary file, fsync, rename, fsync
// of the directory) and starts a new log the same way, so a crash at any
// point leaves the old files or the new ones. Writers from several
// processes take turns through flock(2) on a lock file; concurrent CAS
// calls in one process share one append and one fdatasync (group commit).
// Readers need no lock.
//
// Damage is never repaired silently. A snapshot or log header that is
// truncated, fails its checksum or does not decode, and a log record that
// fails its checksum or does not follow the one before, are reported as a
// *CorruptError naming the file, by OpenFileStore and every later call;
// the store never starts over by itself. The one exception is the last log
// record when it is incomplete (the file ends inside it): that is a write
// cut short by a crash of the machine before its fdatasync returned, so it
// was never acknowledged, and the next write drops it. (Appends that extend
// a file are ordered after their data by ext4, xfs and btrfs, so a crash
// does not leave a full-length record of garbage.)
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
	logOff  int64       // the end of its last record read or written
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
// together: one append and one fdatasync for all of them.
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
// them with one append to the log (or, when it is time, a new snapshot).
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
	if err := s.refresh(true); err != nil {
		fail(err)
		return
	}
	keys := s.keys
	copied := false
	rev := max(s.rev, s.maxRev)
	var evs []Event
	var recs []byte
	for _, c := range calls {
		ok := true
		for _, op := range c.req.ops {
			if keys[op.Key].Rev != op.Rev {
				ok = false
				break
			}
		}
		if !ok {
			c.err = ErrConflict
			continue
		}
		if !copied {
			keys = maps.Clone(s.keys)
			copied = true
		}
		rev++
		c.req.rev = rev
		recs = appendRecord(recs, rev, c.req.ops)
		for _, op := range c.req.ops {
			if op.Delete {
				if _, ok := keys[op.Key]; ok {
					delete(keys, op.Key)
					evs = append(evs, Event{Key: op.Key, Rev: rev, Delete: true})
				}
				continue
			}
			keys[op.Key] = KV{Key: op.Key, Value: op.Value, Rev: rev}
			evs = append(evs, Event{Key: op.Key, Value: op.Value, Rev: rev})
		}
	}
	if !copied {
		return // nothing to write: every call conflicted
	}
	var err error
	if s.log == nil || s.snapFi == nil || s.rev != s.maxRev || s.logOff+int64(len(recs)) > max(compactAt, s.snapFi.Size()) {
		// No files yet, a gap in the revisions (the files were removed),
		// or a long log: write the whole state.
		err = s.compact(rev, keys)
	} else {
		err = s.appendLog(recs)
	}
	if err != nil {
		// What is on disk is unknown: read it again next time. The calls
		// fail, though some may have been written.
		s.forget()
		fail(err)
		return
	}
	s.rev, s.maxRev, s.keys = rev, rev, keys
	s.hub.publish(evs)
}

// appendLog writes records at the end of the log and fdatasyncs it.
func (s *FileStore) appendLog(recs []byte) error {
	if _, err := s.log.WriteAt(recs, s.logOff); err != nil {
		return fmt.Errorf("ipam: write %s: %w", s.logPath, err)
	}
	if err := fdatasync(s.log); err != nil {
		return fmt.Errorf("ipam: write %s: %w", s.logPath, err)
	}
	s.logOff += int64(len(recs))
	return nil
}

// compact writes keys as the snapshot at rev, then an empty log after it.
// A crash in between leaves the new snapshot and the old log, whose
// records are all at or before rev: the next read skips them.
func (s *FileStore) compact(rev int64, keys map[string]KV) error {
	id := s.id
	if id == 0 {
		id = newStoreID()
	}
	snap, err := s.replace(s.path, encodeFile(id, rev, keys))
	if err != nil {
		return err
	}
	snapFi, err := snap.Stat()
	snap.Close()
	if err != nil {
		return fmt.Errorf("ipam: write %s: %w", s.path, err)
	}
	log, err := s.replace(s.logPath, encodeLogHeader(id, rev))
	if err != nil {
		return err
	}
	logFi, err := log.Stat()
	if err != nil {
		log.Close()
		return fmt.Errorf("ipam: write %s: %w", s.logPath, err)
	}
	if s.log != nil {
		s.log.Close()
	}
	s.id, s.snapRev, s.snapFi = id, rev, snapFi
	s.log, s.logFi, s.logOff = log, logFi, logHeader
	return nil
}

// replace replaces the file at path with one holding buf: temporary file,
// fsync, rename, fsync of the directory. It returns the new file, open.
func (s *FileStore) replace(path string, buf []byte) (*os.File, error) {
	tmp := path + tmpSuffix
	f, err := createExcl(tmp)
	if err != nil {
		return nil, fmt.Errorf("ipam: write %s: %w", path, err)
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = s.dirf.Sync()
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

// errBusy: a read without the lock met a log record that does not check
// out; it may be one being written, so the read is done again with the
// lock.
var errBusy = errors.New("ipam: log record being written")

// errMoved: another process replaced the snapshot or the log while this
// one read them; read again.
var errMoved = errors.New("ipam: files replaced while read")

// refresh reads what other processes wrote since this one last read or
// wrote the files and publishes it to watches. locked says that the caller
// holds the lock exclusively: then an incomplete last record (a crash) is
// cut off. Called with s.mu held.
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
// record that does not check out is damage; cut that an incomplete last
// record may be removed.
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

	base, snapRev, off := &fileState{id: s.id, rev: s.rev, keys: s.keys}, s.snapRev, s.logOff
	switch {
	case snap != nil:
		base, snapRev, off = snap, snap.rev, 0
	case newLog:
		// Another log after the same snapshot: the cached state is the
		// old log's, so read the snapshot again too.
		closeNew()
		return errMoved
	}
	if snap != nil && snap.fi == nil && logf != nil {
		closeNew()
		return &CorruptError{File: s.path, Err: fmt.Errorf("missing, and %s, which follows it, is there", s.logPath)}
	}
	next, end, evs, err := s.replay(logf, off, base, snapRev, settled, cut)
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
	s.logOff = end
	if snap != nil {
		s.snapFi, s.snapRev = snap.fi, snap.rev
		evs = s.diff(next.keys, next.rev)
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
}

// loadSnapshot reads the snapshot if it is not the one read or written
// last, and returns it (nil: unchanged). No snapshot is an empty store, at
// the highest revision seen.
func (s *FileStore) loadSnapshot() (*fileState, error) {
	f, err := openPrivate(s.path, os.O_RDONLY)
	if errors.Is(err, fs.ErrNotExist) {
		return &fileState{rev: s.maxRev, keys: map[string]KV{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ipam: read %s: %w", s.path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("ipam: read %s: %w", s.path, err)
	}
	buf := make([]byte, fi.Size())
	n, err := io.ReadFull(f, buf[:min(len(buf), fileHeader)])
	if err != nil {
		return nil, &CorruptError{File: s.path, Err: fmt.Errorf("short read: %w", err)}
	}
	// The file read or written last, untouched? Its header says whether
	// it is the same state (inode numbers are reused, and modification
	// times can be coarser than writes), its inode, size and time whether
	// it was changed in place.
	if n == fileHeader && s.snapFi != nil && string(buf[:8]) == fileMagic &&
		binary.BigEndian.Uint64(buf[8:]) == s.id && int64(binary.BigEndian.Uint64(buf[16:])) == s.snapRev &&
		os.SameFile(fi, s.snapFi) && fi.Size() == s.snapFi.Size() && fi.ModTime().Equal(s.snapFi.ModTime()) {
		return nil, nil
	}
	if _, err := io.ReadFull(f, buf[n:]); err != nil {
		return nil, &CorruptError{File: s.path, Err: fmt.Errorf("short read: %w", err)}
	}
	id, rev, keys, err := decodeFile(buf)
	if err != nil {
		return nil, &CorruptError{File: s.path, Err: err}
	}
	return &fileState{id: id, rev: rev, keys: keys, fi: fi}, nil
}

// replay applies the log's records after off (0: from its header) to base,
// whose snapshot is at snapRev, and returns the new state, the end of the
// last good record, and the events.
func (s *FileStore) replay(f *os.File, off int64, base *fileState, snapRev int64, settled, cut bool) (*fileState, int64, []Event, error) {
	if f == nil {
		return base, 0, nil, nil
	}
	corrupt := func(err error) error { return &CorruptError{File: s.logPath, Err: err} }
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, nil, fmt.Errorf("ipam: read %s: %w", s.logPath, err)
	}
	switch size := fi.Size(); {
	case size == off:
		return base, off, nil, nil // nothing new: the usual case
	case size < off:
		return nil, 0, nil, corrupt(fmt.Errorf("%d bytes, shorter than the %d read before", size, off))
	}
	buf := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return nil, 0, nil, fmt.Errorf("ipam: read %s: %w", s.logPath, err)
	}
	if off == 0 {
		id, logBase, err := decodeLogHeader(buf)
		switch {
		case err != nil:
			return nil, 0, nil, corrupt(err)
		case base.id != 0 && id != base.id:
			return nil, 0, nil, corrupt(fmt.Errorf("the log of another store (id %x; the snapshot's is %x)", id, base.id))
		case logBase > base.rev && settled:
			return nil, 0, nil, corrupt(fmt.Errorf("follows revision %d, but the snapshot is at %d", logBase, base.rev))
		case logBase > base.rev:
			return nil, 0, nil, errMoved // the snapshot is older than the log: read during a compaction
		}
		buf, off = buf[logHeader:], logHeader
	}
	st := base
	copied := false
	var evs []Event
	for len(buf) > 0 {
		rev, ops, n, err := decodeRecord(buf)
		if errors.Is(err, errTorn) {
			// A write under way, or one a crash cut short: not
			// acknowledged. With the lock, drop it.
			if cut {
				if err := f.Truncate(off); err != nil {
					return nil, 0, nil, fmt.Errorf("ipam: drop the incomplete last record of %s: %w", s.logPath, err)
				}
				if err := fdatasync(f); err != nil {
					return nil, 0, nil, fmt.Errorf("ipam: drop the incomplete last record of %s: %w", s.logPath, err)
				}
			}
			break
		}
		if err != nil {
			if !settled {
				return nil, 0, nil, errBusy
			}
			return nil, 0, nil, corrupt(fmt.Errorf("record at offset %d: %w", off, err))
		}
		if rev <= snapRev && rev <= st.rev {
			buf, off = buf[n:], off+int64(n)
			continue // in the snapshot already (a crash during a compaction)
		}
		if rev != st.rev+1 {
			return nil, 0, nil, corrupt(fmt.Errorf("record at offset %d: revision %d after %d", off, rev, st.rev))
		}
		buf, off = buf[n:], off+int64(n)
		if !copied {
			st = &fileState{id: base.id, rev: base.rev, keys: maps.Clone(base.keys), fi: base.fi}
			copied = true
		}
		st.rev = rev
		for _, op := range ops {
			if op.Delete {
				if _, ok := st.keys[op.Key]; ok {
					delete(st.keys, op.Key)
					evs = append(evs, Event{Key: op.Key, Rev: rev, Delete: true})
				}
				continue
			}
			st.keys[op.Key] = KV{Key: op.Key, Value: op.Value, Rev: rev}
			evs = append(evs, Event{Key: op.Key, Value: op.Value, Rev: rev})
		}
	}
	if st.id == 0 {
		st.id = base.id
	}
	return st, off, evs, nil
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
//	header: magic "nsnetlg1" | store id uint64 | revision of the snapshot
//	it follows uint64 | crc32c of the 24 bytes before, uint32 | 4 zero bytes
//	records: payload length uint32 | crc32c of the payload uint32 | payload:
//	revision uvarint, op count uvarint, per op: 0 (put) or 1 (delete), key,
//	and for a put the value (as in the state file)
//
// all integers big endian. A record is one revision: one CAS.
const (
	logMagic  = "nsnetlg1"
	logHeader = 32
	recHeader = 8
)

// errTorn: the log ends inside a record.
var errTorn = errors.New("incomplete record")

func encodeLogHeader(id uint64, base int64) []byte {
	buf := make([]byte, logHeader)
	copy(buf, logMagic)
	binary.BigEndian.PutUint64(buf[8:], id)
	binary.BigEndian.PutUint64(buf[16:], uint64(base))
	binary.BigEndian.PutUint32(buf[24:], crc32.Checksum(buf[:24], castagnoli))
	return buf
}

func decodeLogHeader(buf []byte) (id uint64, base int64, err error) {
	switch {
	case len(buf) < logHeader:
		return 0, 0, fmt.Errorf("truncated header: %d bytes", len(buf))
	case string(buf[:8]) != logMagic:
		return 0, 0, fmt.Errorf("not an nsnet log (magic %q)", buf[:8])
	case binary.BigEndian.Uint32(buf[24:]) != crc32.Checksum(buf[:24], castagnoli):
		return 0, 0, errors.New("header checksum mismatch")
	}
	return binary.BigEndian.Uint64(buf[8:]), int64(binary.BigEndian.Uint64(buf[16:])), nil
}

// appendRecord appends the record of ops at rev to buf.
func appendRecord(buf []byte, rev int64, ops []Op) []byte {
	start := len(buf)
	buf = append(buf, make([]byte, recHeader)...)
	buf = binary.AppendUvarint(buf, uint64(rev))
	buf = binary.AppendUvarint(buf, uint64(len(ops)))
	for _, op := range ops {
		if op.Delete {
			buf = append(buf, 1)
			buf = appendBytes(buf, []byte(op.Key))
			continue
		}
		buf = append(buf, 0)
		buf = appendBytes(buf, []byte(op.Key))
		buf = appendBytes(buf, op.Value)
	}
	payload := buf[start+recHeader:]
	binary.BigEndian.PutUint32(buf[start:], uint32(len(payload)))
	binary.BigEndian.PutUint32(buf[start+4:], crc32.Checksum(payload, castagnoli))
	return buf
}

// decodeRecord decodes the record at the start of buf and returns its
// length; errTorn if buf ends inside it.
func decodeRecord(buf []byte) (rev int64, ops []Op, n int, err error) {
	if len(buf) < recHeader {
		return 0, nil, 0, errTorn
	}
	size := uint64(binary.BigEndian.Uint32(buf))
	if size > uint64(len(buf)-recHeader) {
		return 0, nil, 0, errTorn
	}
	payload := buf[recHeader : recHeader+size]
	if binary.BigEndian.Uint32(buf[4:]) != crc32.Checksum(payload, castagnoli) {
		return 0, nil, 0, errors.New("checksum mismatch")
	}
	d := decoder{buf: payload}
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
	if d.err == nil && len(d.buf) != 0 {
		d.err = fmt.Errorf("%d bytes after the last op", len(d.buf))
	}
	if d.err != nil {
		return 0, nil, 0, d.err
	}
	return rev, ops, recHeader + int(size), nil
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
