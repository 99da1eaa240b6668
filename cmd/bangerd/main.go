// Command bangerd is banger's daemon.
package main

import (
	"os"

	"github.com/banger/banger/internal/daemon"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:], os.Stderr))
}
