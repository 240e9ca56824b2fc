//go:build linux

package nft

import (
	"errors"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
	"golang.org/x/sys/unix"
)

// Exists reports whether host has nsnet's table.
func Exists(host *netns.NS) (bool, error) {
	var found bool
	err := host.NFTables(func(c *nftables.Conn) error {
		_, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		found = err == nil
		return err
	})
	return found, err
}
