// Command banger-init is the initramfs /init of banger guests.
package main

import "github.com/banger/banger/internal/guestinit"

func main() {
	guestinit.Main()
}
