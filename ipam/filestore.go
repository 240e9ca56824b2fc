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
	stateFile = "store.db" // the state, replaced as a whole on each write
	tmpFile   = "store.db.tmp"
	lockFile  = "store.lock" // flock(2)ed by writers; never replaced
)

// FileStore is a Store in one directory, the embedded default on one machine.
// Every state change writes a new state file, fsyncs it, renames it over the
// old one and fsyncs the directory, so a crash at any point leaves either the
// old or the new state, and a CAS returns only when its change is durable.
// Writers from several processes take turns through flock(2) on a lock file;
// concurrent CAS calls in one process share one write (group commit).
// Readers need no lock: they read whichever complete state file is in place.
//
// A state file that is truncated, fails its checksum or does not decode is
// reported as a *CorruptError naming the file, by OpenFileStore and every
// later call; the store never starts over by itself.
//
// Watch sees the changes this process makes at once, and those of other
// processes within about 100ms (it polls the state file while watches are
// open); changes another process made in between two polls come as one
// event per changed key, and a key deleted there comes at the revision of
// the poll. Its history starts when the store is opened: a watch from an
// earlier revision gets a *CompactedError.
//
// The whole state is rewritten on each change, which suits the size of one
// machine's state (a few megabytes at most). Safe for concurrent use.
type FileStore struct {
	dir  string
	path string
	lock *os.File
	dirf *os.File

	mu     sync.Mutex // guards the fields below and this process's use of the lock
	id     uint64     // the random id of the state file read last; 0: none yet
	rev    int64
	maxRev int64       // highest revision seen, so revisions never go back
	fi     os.FileInfo // of the state file read or written last: unchanged, it need not be read
	keys   map[string]KV
	closed bool

	group   *group[*casReq]
	hub     *hub
	polling bool
	stop    chan struct{}
}

// OpenFileStore opens the file store in dir, creating dir (mode 0700) if
// needed; "" means DefaultDir. It reads the state file, so a corrupt one is
// reported here, as a *CorruptError. Close it when done.
func OpenFileStore(dir string) (*FileStore, error) {
	if dir == "" {
		dir = DefaultDir
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ipam: open file store: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ipam: open file store: %w", err)
	}
	dirf, err := os.Open(dir)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("ipam: open file store: %w", err)
	}
	s := &FileStore{
		dir:   dir,
		path:  filepath.Join(dir, stateFile),
		lock:  lock,
		dirf:  dirf,
		keys:  map[string]KV{},
		group: newGroup[*casReq](),
		stop:  make(chan struct{}),
	}
	s.mu.Lock()
	_, err = s.refresh()
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
// together: one write, fsync and rename for all of them.
func (s *FileStore) CAS(ctx context.Context, ops ...Op) (int64, error) {
	req := &casReq{ops: ops}
	if err := s.group.do(ctx, req, s.commit); err != nil {
		return 0, err
	}
	return req.rev, nil
}

type casReq struct {
	ops []Op
	rev int64 // set by commit
}

// commit applies the calls in order, each at its own revision, and writes
// the result once.
func (s *FileStore) commit(_ context.Context, calls []*call[*casReq]) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fail := func(err error) {
		for _, c := range calls {
			c.err = err
		}
	}
	if s.closed {
		fail(errClosed)
		return
	}
	if err := flock(s.lock, true); err != nil {
		fail(fmt.Errorf("ipam: lock %s: %w", s.lock.Name(), err))
		return
	}
	defer flock(s.lock, false)
	if _, err := s.refresh(); err != nil {
		fail(err)
		return
	}
	keys := s.keys
	copied := false
	rev := max(s.rev, s.maxRev)
	var evs []Event
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
			keys = make(map[string]KV, len(s.keys)+len(c.req.ops))
			for k, v := range s.keys {
				keys[k] = v
			}
			copied = true
		}
		rev++
		c.req.rev = rev
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
	id := s.id
	if id == 0 {
		id = newStoreID()
	}
	fi, err := s.write(id, rev, keys)
	if err != nil {
		// The state on disk is the old one or, if the rename happened and
		// only the directory fsync failed, possibly the new one: read it
		// again next time.
		s.id, s.rev, s.fi = 0, 0, nil
		for _, c := range calls {
			if c.err == nil {
				c.err = err
			}
		}
		return
	}
	s.id, s.rev, s.maxRev, s.keys, s.fi = id, rev, rev, keys, fi
	s.hub.publish(evs)
}

// write writes a new state file: tmp file, fsync, rename, fsync directory.
// It returns the new file's FileInfo.
func (s *FileStore) write(id uint64, rev int64, keys map[string]KV) (os.FileInfo, error) {
	buf := encodeFile(id, rev, keys)
	tmp := filepath.Join(s.dir, tmpFile)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ipam: write state: %w", err)
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	var fi os.FileInfo
	if err == nil {
		fi, err = f.Stat()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err == nil {
		err = s.dirf.Sync()
	}
	if err != nil {
		return nil, fmt.Errorf("ipam: write state %s: %w", s.path, err)
	}
	return fi, nil
}

// read brings the cached state up to date with the file, for a read.
func (s *FileStore) read() error {
	if s.closed {
		return errClosed
	}
	_, err := s.refresh()
	return err
}

// refresh reads the state file again if it changed since it was read last
// (another process wrote it), and reports whether it did. Changes found
// this way are published to watches as one event per changed key. Called
// with s.mu held.
func (s *FileStore) refresh() (bool, error) {
	f, err := os.Open(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		// No state yet (or it was moved away on purpose): an empty store.
		// Revisions go on from the highest seen, never back.
		if s.id != 0 || len(s.keys) > 0 {
			s.diff(map[string]KV{}, max(s.rev, s.maxRev)+1)
		}
		s.id, s.rev, s.keys, s.fi = 0, 0, map[string]KV{}, nil
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("ipam: read state: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("ipam: read state %s: %w", s.path, err)
	}
	buf := make([]byte, fi.Size())
	n, err := io.ReadFull(f, buf[:min(len(buf), fileHeader)])
	if err != nil {
		return false, &CorruptError{File: s.path, Err: fmt.Errorf("short read: %w", err)}
	}
	// The file read or written last, untouched? Its revision says whether
	// it is the same state (inode numbers are reused, and modification
	// times can be coarser than writes), its inode and time whether it was
	// changed in place.
	if n == fileHeader && s.fi != nil && string(buf[:8]) == fileMagic &&
		binary.BigEndian.Uint64(buf[8:]) == s.id && int64(binary.BigEndian.Uint64(buf[16:])) == s.rev &&
		os.SameFile(fi, s.fi) && fi.Size() == s.fi.Size() && fi.ModTime().Equal(s.fi.ModTime()) {
		return false, nil
	}
	if _, err := io.ReadFull(f, buf[n:]); err != nil {
		return false, &CorruptError{File: s.path, Err: fmt.Errorf("short read: %w", err)}
	}
	id, rev, keys, err := decodeFile(buf)
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) {
			ce.File = s.path
			return false, ce
		}
		return false, &CorruptError{File: s.path, Err: err}
	}
	if s.id != 0 || len(s.keys) > 0 {
		s.diff(keys, rev)
	}
	s.id, s.rev, s.maxRev, s.keys, s.fi = id, rev, max(s.maxRev, rev), keys, fi
	return true, nil
}

// diff publishes the changes from the cached keys to keys, which another
// process wrote, up to revision rev.
func (s *FileStore) diff(keys map[string]KV, rev int64) {
	if s.hub == nil {
		return
	}
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
	s.hub.publish(evs)
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

// poll reads the state file every 100ms while watches are open.
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
		s.refresh() // errors surface on the next Get, List or CAS
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
