package kernel

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Module is one loadable kernel module (.ko).
type Module struct {
	// Name is the module's name from its modinfo, e.g. virtio_blk.
	Name string
	// Path is the absolute path of the .ko file.
	Path string
	// RelPath is Path relative to the modules directory, e.g. kernel/drivers/block/virtio_blk.ko.
	RelPath string
	// Depends are the names of the modules it needs loaded first.
	Depends []string
}

// ReadModule reads name= and depends= from the .modinfo section of an uncompressed .ko file.
func ReadModule(path string) (Module, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Module{}, fmt.Errorf("reading module %s: %w", path, err)
	}
	f, err := elf.Open(abs)
	if err != nil {
		return Module{}, fmt.Errorf("reading module %s: %w", abs, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return Module{}, fmt.Errorf("reading module %s: no .modinfo section", abs)
	}
	data, err := sec.Data()
	if err != nil {
		return Module{}, fmt.Errorf("reading module %s: .modinfo: %w", abs, err)
	}
	m := Module{Path: abs}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			m.Name = v
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					m.Depends = append(m.Depends, d)
				}
			}
		}
	}
	if m.Name == "" {
		m.Name = moduleKey(filepath.Base(abs))
	}
	return m, nil
}

// moduleKey normalizes a module name or .ko file name: dashes become underscores.
func moduleKey(name string) string {
	name = strings.TrimSuffix(name, ".ko")
	return strings.ReplaceAll(name, "-", "_")
}

// builtinConfig maps module names to the config symbol that builds them in,
// for trees without modules.builtin.
var builtinConfig = map[string]string{
	"ext4":                              "CONFIG_EXT4_FS",
	"virtio":                            "CONFIG_VIRTIO",
	"virtio_ring":                       "CONFIG_VIRTIO",
	"virtio_mmio":                       "CONFIG_VIRTIO_MMIO",
	"virtio_blk":                        "CONFIG_VIRTIO_BLK",
	"virtio_net":                        "CONFIG_VIRTIO_NET",
	"virtio_console":                    "CONFIG_VIRTIO_CONSOLE",
	"virtio_rng":                        "CONFIG_HW_RANDOM_VIRTIO",
	"vsock":                             "CONFIG_VSOCKETS",
	"vmw_vsock_virtio_transport":        "CONFIG_VIRTIO_VSOCKETS",
	"vmw_vsock_virtio_transport_common": "CONFIG_VIRTIO_VSOCKETS_COMMON",
	"failover":                          "CONFIG_FAILOVER",
	"net_failover":                      "CONFIG_NET_FAILOVER",
}

// moduleIndex is a scan of one modules tree.
type moduleIndex struct {
	dir     string
	files   map[string]string // module key -> relative path
	builtin map[string]bool   // module key -> built in
	config  map[string]string // CONFIG_X -> value, when a config was found
}

func scanModules(modulesDir string) (*moduleIndex, error) {
	dir, err := filepath.Abs(modulesDir)
	if err != nil {
		return nil, fmt.Errorf("scanning modules %s: %w", modulesDir, err)
	}
	idx := &moduleIndex{dir: dir, files: map[string]string{}, builtin: map[string]bool{}}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".ko") {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		key := moduleKey(d.Name())
		if prev, ok := idx.files[key]; !ok || rel < prev {
			idx.files[key] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scanning modules %s: %w", dir, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				idx.builtin[moduleKey(filepath.Base(line))] = true
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("scanning modules %s: %w", dir, err)
	}
	idx.config, err = findConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("scanning modules %s: %w", dir, err)
	}
	return idx, nil
}

// findConfig reads the kernel config that belongs with a modules tree: the
// package layout (<root>/lib/modules/<kver> with <root>/boot/config-<kver>) or
// the bundle layout (modules/<kver> next to kernel.config). It returns nil when there is none.
func findConfig(dir string) (map[string]string, error) {
	kver := filepath.Base(dir)
	candidates := []string{
		filepath.Join(dir, "config"),
		filepath.Join(dir, "..", "..", "..", "boot", "config-"+kver),
		filepath.Join(dir, "..", "..", "..", "..", "boot", "config-"+kver), // usr/lib/modules
		filepath.Join(dir, "..", "..", "kernel.config"),
	}
	for _, c := range candidates {
		f, err := os.Open(c)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		defer f.Close()
		cfg := map[string]string{}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), "="); ok && strings.HasPrefix(k, "CONFIG_") {
				cfg[k] = v
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("reading kernel config %s: %w", c, err)
		}
		return cfg, nil
	}
	return nil, nil
}

func (idx *moduleIndex) isBuiltin(key string) bool {
	if idx.builtin[key] {
		return true
	}
	sym, ok := builtinConfig[key]
	return ok && idx.config[sym] == "y"
}

// LoadOrder returns the modules named by names together with everything they
// depend on, each after its dependencies. Names may use - or _ interchangeably.
// Modules built into the kernel (modules.builtin, or =y in the kernel config)
// are left out; a name that is neither a module nor built in is an error.
func LoadOrder(modulesDir string, names []string) ([]Module, error) {
	idx, err := scanModules(modulesDir)
	if err != nil {
		return nil, err
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []Module
	var visit func(key string, chain []string) error
	visit = func(key string, chain []string) error {
		switch state[key] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("ordering modules: dependency cycle %s -> %s", strings.Join(chain, " -> "), key)
		}
		rel, ok := idx.files[key]
		if !ok {
			state[key] = done
			if idx.isBuiltin(key) {
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("ordering modules: %s needs module %s, which is neither in %s nor built in", chain[len(chain)-1], key, idx.dir)
			}
			return fmt.Errorf("ordering modules: module %s is neither in %s nor built in", key, idx.dir)
		}
		state[key] = visiting
		m, err := ReadModule(filepath.Join(idx.dir, rel))
		if err != nil {
			return fmt.Errorf("ordering modules: %w", err)
		}
		m.RelPath = rel
		for _, d := range m.Depends {
			if err := visit(moduleKey(d), append(chain, key)); err != nil {
				return err
			}
		}
		state[key] = done
		order = append(order, m)
		return nil
	}
	for _, n := range names {
		if err := visit(moduleKey(n), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
