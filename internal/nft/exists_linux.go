//go:build linux

package nft

import (
	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
)

// Exists reports whether host has nsnet's table.
func Exists(host *netns.NS) (bool, error) {
	var found bool
	err := host.NFTables(func(c *nftables.Conn) error {
		ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		for _, t := range ts {
			found = found || t.Name == TableName
		}
		return err
	})
	return found, err
}
