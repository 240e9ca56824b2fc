//go:build !linux

// Package nft is Linux-only; on other systems it is empty.
package nft
