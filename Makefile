# banger build, bundle and test entry points. See README.md.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# Go from PATH, else where the Go tarball installs it.
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BUILD := build
BIN := $(BUILD)/bin
RUNTIME := $(BUILD)/runtime
DIST := $(BUILD)/dist
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/banger/banger/internal/daemon.Version=$(VERSION) -X github.com/banger/banger/internal/cli.Version=$(VERSION)
# Go test timeout for the whole suite (VM tests boot real guests under TCG).
TEST_TIMEOUT ?= 75m
BENCH_N ?= 5
# golangci-lint is a Go module: pinned here, built and cached by go run.
GOLANGCI_LINT ?= github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0

.PHONY: all build runtime-bundle dist test unit-test lint fuzz bench-create bench-coldboot bench-cp bench-ports bench-mounts verify void-kernel rootfs-void verify-void void-fixture clean FORCE

all: build

build: $(BIN)/banger $(BIN)/bangerd $(RUNTIME)/banger-vsock-agent $(BIN)/banger-init

$(BIN)/banger: FORCE
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/banger

$(BIN)/bangerd: FORCE
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/bangerd

# Guest binaries are static: they run inside Debian guests and the initramfs.
$(RUNTIME)/banger-vsock-agent: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $@ ./cmd/banger-vsock-agent

$(BIN)/banger-init: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $@ ./cmd/banger-init

# Builds build/runtime from Debian packages and our Go code, or installs a
# prebuilt bundle when RUNTIME_MANIFEST names a manifest.
runtime-bundle: build
ifdef RUNTIME_MANIFEST
	$(BIN)/banger runtime install --manifest '$(RUNTIME_MANIFEST)' --out $(RUNTIME)
else
	$(BIN)/banger runtime build --out $(RUNTIME) --init $(BIN)/banger-init --agent $(RUNTIME)/banger-vsock-agent
endif

# Packs build/runtime (without its SSH key pair) into build/dist with a manifest.
dist: runtime-bundle
	$(BIN)/banger runtime dist --runtime $(RUNTIME) --out $(DIST)

# The whole suite, VM tests included (they need root, qemu and the bundle).
# -p 1: packages run one at a time, so the TCG guests of internal/image/rootfs and
# test/e2e do not compete for the host's few cores.
test: runtime-bundle
	BANGER_VM_TESTS=1 BANGER_RUNTIME=$(abspath $(RUNTIME)) BANGER_BIN=$(abspath $(BIN)) \
		$(GO) test -p 1 -count=1 -timeout $(TEST_TIMEOUT) ./...

# Unit tests only: VM tests skip, saying how to enable them. They need
# neither root nor qemu nor a bundle (the VM engine runs over a fake
# hypervisor).
unit-test:
	$(GO) test ./...

# go vet, the error style (errorlint, revive's error-strings), unused code,
# printing outside commands (forbidigo) and formatting: see .golangci.yml.
lint:
	$(GO) run $(GOLANGCI_LINT) run ./...

# Fuzz targets of every decoder that takes outside input, as package:FuzzName.
# go test ./... (make unit-test, make test, CI) runs each one's seeds and
# testdata/fuzz corpus as ordinary tests; make fuzz mutates each for FUZZTIME
# (30s each, about 9 minutes in all; FUZZTIME=5s is a brief pass) with
# FUZZ_PARALLEL workers. FUZZ=regexp picks targets by package:FuzzName.
# New findings go to the package's testdata/fuzz/FuzzName/: fix the bug and
# commit the input. scripts/fuzz.sh reruns a target that Go's fuzztime race
# (go.dev/issue/75804) failed with no input. A Fuzz function missing from this list fails the target.
FUZZTIME ?= 30s
FUZZ_PARALLEL ?= 1
FUZZ ?= .
FUZZ_TARGETS := \
	./internal/agent:FuzzClientReply \
	./internal/vm:FuzzHostKeyPinning \
	./internal/guestconfig:FuzzParseNetwork \
	./internal/guestconfig:FuzzCmdline \
	./internal/guest/initrd:FuzzParseCmdline \
	./internal/guest/initrd:FuzzHostCmdline \
	./internal/config:FuzzLoad \
	./internal/daemon/api:FuzzDecode \
	./internal/dns:FuzzQuery \
	./internal/dns:FuzzUpstreamAnswer \
	./internal/guest/tmux:FuzzTmuxParsePanes \
	./internal/guest/tmux:FuzzTmuxRestore \
	./internal/bundle:FuzzLoad \
	./internal/bundle/dist:FuzzReadManifest \
	./internal/bundle/dist:FuzzExtractTarGz \
	./internal/units:FuzzParseSize \
	./internal/units:FuzzParseMiB

fuzz:
	@found=$$(grep -ro --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' internal cmd | \
		sed -E 's#^(.*)/[^/]*:func (Fuzz[A-Za-z0-9_]*)$$#./\1:\2#' | sort); \
	listed=$$(printf '%s\n' $(FUZZ_TARGETS) | sort); \
	if [[ "$$found" != "$$listed" ]]; then \
		echo "fuzz: FUZZ_TARGETS in the Makefile and the Fuzz functions differ:" >&2; \
		diff <(echo "$$listed") <(echo "$$found") >&2 || true; exit 1; \
	fi
	@GO='$(GO)' FUZZTIME='$(FUZZTIME)' FUZZ_PARALLEL='$(FUZZ_PARALLEL)' FUZZ='$(FUZZ)' \
		scripts/fuzz.sh $(FUZZ_TARGETS)

# For the minimal and the docker image (BANGER_BENCH_IMAGES), BENCH_N times
# each: bare hypervisor boot, cold create, warm create, fork, suspend,
# resume and 4 warm creates in parallel, to first SSH; prints medians, p90s,
# the per-stage split and the warm/cold, resume/cold and disk ratios.
bench-create: runtime-bundle
	BANGER_VM_TESTS=1 BANGER_RUNTIME=$(abspath $(RUNTIME)) BANGER_BIN=$(abspath $(BIN)) BANGER_BENCH_N=$(BENCH_N) \
		$(GO) test -count=1 -timeout 60m -run '^TestBenchCreate$$' -v ./test/e2e

# Boots the floor (the docker image with a shell init that configures eth0 and
# execs sshd) and cold-creates the docker image through bangerd, BENCH_N times
# each, interleaved, and prints medians, p90s, the per-stage split and the ratio.
bench-coldboot: runtime-bundle
	BANGER_VM_TESTS=1 BANGER_RUNTIME=$(abspath $(RUNTIME)) BANGER_BIN=$(abspath $(BIN)) BANGER_BENCH_N=$(BENCH_N) \
		$(GO) test -count=1 -timeout 60m -run '^TestBenchColdBoot$$' -v ./test/e2e

# Copies a 100 MiB file into a minimal VM and back BENCH_N times with
# banger vm cp, beside plain ssh with each cipher, and prints the medians.
bench-cp: runtime-bundle
	BANGER_VM_TESTS=1 BANGER_RUNTIME=$(abspath $(RUNTIME)) BANGER_BIN=$(abspath $(BIN)) BANGER_BENCH_N=$(BENCH_N) \
		$(GO) test -count=1 -timeout 60m -run '^TestBenchCopy$$' -v ./test/e2e

# Writes and reads a 256 MiB file and runs git status on a 10,000-file tree
# BANGER_BENCH_N times in a docker image VM, through a virtio-fs host folder
# and inside /root, and prints the medians.
bench-mounts: runtime-bundle
	BANGER_VM_TESTS=1 BANGER_RUNTIME=$(abspath $(RUNTIME)) BANGER_BIN=$(abspath $(BIN)) BANGER_BENCH_N=$(BENCH_N) \
		$(GO) test -count=1 -timeout 60m -run '^TestBenchMounts$$' -v ./test/e2e

# Moves 100 MiB each way BANGER_BENCH_N times through a minimal VM's published port
# and directly to its address, times new connections and UDP round trips on both
# paths, and prints the medians; then the relay alone on loopback (go bench).
bench-ports: runtime-bundle
	BANGER_VM_TESTS=1 BANGER_RUNTIME=$(abspath $(RUNTIME)) BANGER_BIN=$(abspath $(BIN)) BANGER_BENCH_N=$(BENCH_N) \
		$(GO) test -count=1 -timeout 60m -run '^TestBenchPorts$$' -v ./test/e2e
	$(GO) test -run '^$$' -bench . -count $(BENCH_N) ./internal/portfwd

# Void Linux (experimental). VOID_MIRROR names the Void mirror (default
# Void's public repo-default mirror; file:///path works, e.g. the fixture
# mirror that make void-fixture prints).
export VOID_MIRROR
VOID_KERNEL := $(RUNTIME)/void-kernel

# Stages a Void linux6.12 kernel, its modules and a banger initramfs in build/runtime/void-kernel.
void-kernel: build
	$(BIN)/banger runtime void-kernel --out $(VOID_KERNEL) --init $(BIN)/banger-init

# Builds build/runtime/rootfs-void.ext4 and work-seed-void.ext4 (needs root
# and the bundle's SSH key); takes the staged void-kernel's modules when it is complete.
rootfs-void: build
	$(BIN)/banger runtime rootfs-void --out $(RUNTIME)/rootfs-void.ext4 --work-seed $(RUNTIME)/work-seed-void.ext4 \
		--agent $(RUNTIME)/banger-vsock-agent --ssh-key $(RUNTIME)/id_ed25519.pub --kernel-dir $(VOID_KERNEL)

# Registers the Void image as void-exp in scripts/verify.sh's private daemon
# (with the staged kernel, initramfs and modules when build/runtime/void-kernel
# exists; a half-staged one is refused) and runs the smoke test against it.
verify-void: build
	@rt=$(abspath $(RUNTIME)); \
	for f in rootfs-void.ext4 work-seed-void.ext4; do \
		[[ -e $$rt/$$f ]] || { echo "verify-void: $$rt/$$f is missing: run 'make rootfs-void' first" >&2; exit 1; }; \
	done; \
	reg="--rootfs $$rt/rootfs-void.ext4 --work-seed $$rt/work-seed-void.ext4"; expect=(); \
	if [[ -e $$rt/void-kernel ]]; then \
		staged=$$($(BIN)/banger runtime void-kernel --check --out $$rt/void-kernel); eval "$$staged"; \
		reg="$$reg --kernel $$kernel --initrd $$initrd --modules $$modules"; expect=(--expect-kernel "$$kernel_version"); \
	fi; \
	scripts/verify.sh --image void-exp --opencode --register "$$reg" "$${expect[@]}"

# Builds the local Void mirror made from Debian's binaries (the stand-in for
# Void's mirrors, which these machines cannot reach) and prints its URL:
#   make void-kernel rootfs-void VOID_MIRROR=$$(make -s void-fixture)
void-fixture:
	$(GO) run ./internal/xbps/fixture/cmd/voidfixture

clean:
	rm -rf $(BUILD)

FORCE:
