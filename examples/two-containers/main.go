//go:build linux

// Command two-containers shows that two containers can talk
// only if they have interfaces on the same network (by address here; by
// name once dnsd is in), or share a namespace.
//
//	go run ./examples/two-containers    # as root
package main

import (
	"context"
	"net/netip"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/netns/nstest"
)

func main() { check.Main(run) }

func run(ctx context.Context, env check.Env) error {
	log, host := env.Log, env.Host
	if err := host.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	front, err := bridge.New(ctx, host, env.Alloc, bridge.Config{Name: "front"})
	if err != nil {
		return err
	}
	defer front.Delete(ctx, true)
	back, err := bridge.New(ctx, host, env.Alloc, bridge.Config{Name: "back"})
	if err != nil {
		return err
	}
	defer back.Delete(ctx, true)
	web, err := env.Container()
	if err != nil {
		return err
	}
	db, err := env.Container()
	if err != nil {
		return err
	}
	if _, err := front.Attach(ctx, bridge.EndpointConfig{ID: "web", NS: web, DefaultRoute: true}); err != nil {
		return err
	}
	edb, err := back.Attach(ctx, bridge.EndpointConfig{ID: "db", NS: db, DefaultRoute: true})
	if err != nil {
		return err
	}
	dbAddr := edb.Addrs[0].Addr()
	log.Refused("web (front) reaches db (back): no common network", nstest.Ping(ctx, web, dbAddr))

	ewb, err := back.Attach(ctx, bridge.EndpointConfig{ID: "web", NS: web})
	if !log.OK("docker network connect back web", err) {
		return err
	}
	log.OK("web reaches db over the common network", check.Exchange(ctx, web, db, netip.AddrPortFrom(dbAddr, 5432).String(), ewb.Addrs[0].Addr().String()))

	// A third container joins db's namespace: no network needed.
	side, err := bridge.Join(db)
	if err != nil {
		return err
	}
	defer side.Close()
	log.OK("a container in db's namespace reaches db over 127.0.0.1", check.Exchange(ctx, side, db, "127.0.0.1:6379", "127.0.0.1"))
	return nil
}
