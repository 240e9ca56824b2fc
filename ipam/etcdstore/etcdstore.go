// Package etcdstore is an ipam.Store in etcd, for address pools and overlay
// networks shared by several hosts. It lives apart from ipam so that programs
// that keep their state on one machine (memory or file store) do not link the
// etcd client, gRPC and protobuf.
package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nsnet/nsnet/ipam"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Store is an ipam.Store in etcd, for pools shared by several hosts. Each CAS
// is one etcd transaction that compares the mod revision of every key it
// writes, so hosts allocating from one pool at the same time never get the
// same address. Safe for concurrent use.
type Store struct {
	c      *clientv3.Client
	prefix string
}

// New returns a Store that keeps its keys in etcd under prefix (for example
// "/nsnet/"), through c. The caller keeps ownership of c and closes it after
// the store. Like `etcdctl --endpoints ... put/get/txn/watch`. A nil client is
// an *ipam.ValidationError.
func New(c *clientv3.Client, prefix string) (*Store, error) {
	if c == nil {
		return nil, &ipam.ValidationError{Pkg: "etcdstore", Field: "client", Value: "<nil>", Reason: "an etcd client is required"}
	}
	return &Store{c: c, prefix: prefix}, nil
}

// Get implements ipam.Store.
func (s *Store) Get(ctx context.Context, key string) (ipam.KV, error) {
	resp, err := s.c.Get(ctx, s.prefix+key)
	if err != nil {
		return ipam.KV{}, fmt.Errorf("etcdstore: get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return ipam.KV{}, ipam.ErrNotFound
	}
	kv := resp.Kvs[0]
	return ipam.KV{Key: key, Value: kv.Value, Rev: kv.ModRevision}, nil
}

// List implements ipam.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]ipam.KV, int64, error) {
	resp, err := s.c.Get(ctx, s.prefix+prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("etcdstore: list %s: %w", prefix, err)
	}
	kvs := make([]ipam.KV, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		kvs[i] = ipam.KV{Key: strings.TrimPrefix(string(kv.Key), s.prefix), Value: kv.Value, Rev: kv.ModRevision}
	}
	return kvs, resp.Header.Revision, nil
}

// CAS implements ipam.Store, as one transaction:
// if mod_revision(key) == Rev for every op, then put or delete every key.
func (s *Store) CAS(ctx context.Context, ops ...ipam.Op) (int64, error) {
	cmps := make([]clientv3.Cmp, len(ops))
	puts := make([]clientv3.Op, len(ops))
	for i, op := range ops {
		k := s.prefix + op.Key
		cmps[i] = clientv3.Compare(clientv3.ModRevision(k), "=", op.Rev)
		if op.Delete {
			puts[i] = clientv3.OpDelete(k)
		} else {
			puts[i] = clientv3.OpPut(k, string(op.Value))
		}
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(puts...).Commit()
	if err != nil {
		return 0, fmt.Errorf("etcdstore: transaction: %w", err)
	}
	if !resp.Succeeded {
		return 0, ipam.ErrConflict
	}
	return resp.Header.Revision, nil
}

// Watch implements ipam.Store with an etcd watch from revision after+1. The etcd
// client resumes a broken watch from the last revision it delivered; if
// that revision has been compacted the watch ends with a *CompactedError.
func (s *Store) Watch(ctx context.Context, prefix string, after int64) <-chan ipam.Event {
	out := make(chan ipam.Event, 16)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := s.c.Watch(wctx, s.prefix+prefix, clientv3.WithPrefix(), clientv3.WithRev(after+1))
	go func() {
		defer close(out)
		defer cancel()
		send := func(ev ipam.Event) bool {
			select {
			case out <- ev:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for resp := range wch {
			if resp.CompactRevision != 0 {
				send(ipam.Event{Err: &ipam.CompactedError{Rev: resp.CompactRevision}})
				return
			}
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					err = &ipam.CompactedError{Rev: resp.CompactRevision}
				}
				if ctx.Err() == nil {
					send(ipam.Event{Err: fmt.Errorf("etcdstore: watch %s: %w", prefix, err)})
				}
				return
			}
			for _, e := range resp.Events {
				ev := ipam.Event{Key: strings.TrimPrefix(string(e.Kv.Key), s.prefix), Rev: e.Kv.ModRevision}
				if e.Type == clientv3.EventTypeDelete {
					ev.Delete = true
				} else {
					ev.Value = e.Kv.Value
				}
				if !send(ev) {
					return
				}
			}
		}
		// The channel closes when ctx is done or the client is closed.
		if ctx.Err() == nil {
			send(ipam.Event{Err: fmt.Errorf("etcdstore: watch %s: %w", prefix, ipam.ErrClosed)})
		}
	}()
	return out
}

// Close implements ipam.Store. It does not close the etcd client.
func (s *Store) Close() error { return nil }

var _ ipam.Store = (*Store)(nil)
