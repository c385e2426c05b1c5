// Package compat is the Go driver's differential compatibility suite for mongomux: everything
// is in the _test.go files, run by compat/run as `go test`.
package compat
