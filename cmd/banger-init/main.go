// Command banger-init is the initramfs /init of banger guests.
package main

import "github.com/banger/banger/internal/guest/initrd"

func main() {
	initrd.Main()
}
