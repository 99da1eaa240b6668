// Command voidfixture builds the local Void mirror made from Debian's binaries and prints its file:// URL, for VOID_MIRROR.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/banger/banger/internal/rootfs"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/void/voidtest"
)

func main() {
	cache := flag.String("cache", "", "cache directory (default ${XDG_CACHE_HOME:-~/.cache}/banger)")
	debian := flag.String("debian-mirror", "", "Debian mirror (default "+rootfs.DefaultMirror+")")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *cache == "" {
		dir, err := rootfs.DefaultCacheDir()
		if err != nil {
			log.Error(err.Error())
			os.Exit(1)
		}
		*cache = dir
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := voidtest.BuildDebianMirror(ctx, runner.Default, voidtest.DebianOptions{CacheDir: *cache, DebianMirror: *debian, Log: log})
	if err != nil {
		log.Error(err.Error())
		os.Exit(1)
	}
	fmt.Println("file://" + dir)
}
