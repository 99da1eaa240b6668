package egress

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

var benchOnce sync.Once

// BenchmarkDNSAnswer measures what a guest waits for one A query through
// banger's DNS on the bridge, in the fixture's namespaces, and reports the
// median and 90th percentile:
//   - forward: the default policy (the server forwards as without a filter);
//   - update: an allow list, every query a new name with a new address, so
//     the answer waits for one nft transaction adding it to the VM's set;
//   - cached: an allow list, the same name again, whose address the set
//     already holds long enough (no nft);
//   - apply: not a query but Apply itself, switching the VM between the
//     default and an allow list (what a boot or `vm set` costs).
//
// update's median less forward's is the latency a set update adds. Run it
// with BANGER_VM_TESTS=1 as root:
//
//	go test ./internal/egress -run '^$' -bench DNSAnswer -benchtime 300x
func BenchmarkDNSAnswer(b *testing.B) {
	if os.Getenv(hostEnv) == "" {
		// The parent only starts the child once, whatever b.N.
		benchOnce.Do(func() {
			bt := "1s"
			if f := flag.Lookup("test.benchtime"); f != nil {
				bt = f.Value.String()
			}
			inHost(b, "-test.run=^$", "-test.bench=^BenchmarkDNSAnswer$", "-test.benchtime="+bt)
		})
		return
	}
	fx := inHost(b)
	w := fx.start(b)
	var conn *mdns.Conn
	if err := fx.g.Do(func() error {
		c, err := net.Dial("udp", gateway.String()+":53")
		conn = &mdns.Conn{Conn: c}
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	var n atomic.Int64
	query := func(b *testing.B, name string) time.Duration {
		m := new(mdns.Msg)
		m.SetQuestion(name, mdns.TypeA)
		start := time.Now()
		conn.SetDeadline(start.Add(3 * time.Second))
		if err := conn.WriteMsg(m); err != nil {
			b.Fatal(err)
		}
		r, err := conn.ReadMsg()
		d := time.Since(start)
		if err != nil || r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
			b.Fatalf("query %s = %v, %v; want one answer", name, r, err)
		}
		return d
	}
	measure := func(b *testing.B, name func() string) {
		ds := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for range b.N {
			ds = append(ds, query(b, name()))
		}
		b.StopTimer()
		slices.Sort(ds)
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds()), "µs-median")
		b.ReportMetric(float64(ds[len(ds)*9/10].Microseconds()), "µs-p90")
	}
	fresh := func() string { return fmt.Sprintf("n%d.bench.test.", n.Add(1)%(1<<16)) }
	ctx := context.Background()
	apply := func(p Policy) {
		if err := w.m.Apply(ctx, VM{ID: "vm1", IP: guestIP, TAP: "vg", Policy: p}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("forward", func(b *testing.B) {
		apply(Policy{})
		measure(b, fresh)
	})
	b.Run("update", func(b *testing.B) {
		apply(Policy{Mode: ModeAllow, Allow: mustList(b, "*.bench.test")})
		measure(b, fresh)
	})
	b.Run("cached", func(b *testing.B) {
		apply(Policy{Mode: ModeAllow, Allow: mustList(b, "*.bench.test")})
		name := fresh()
		query(b, name)
		measure(b, func() string { return name })
	})
	b.Run("apply", func(b *testing.B) {
		policies := []Policy{{}, {Mode: ModeAllow, Allow: mustList(b, "*.bench.test,github.com:443")}}
		ds := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := range b.N {
			start := time.Now()
			apply(policies[i%2])
			ds = append(ds, time.Since(start))
		}
		b.StopTimer()
		slices.Sort(ds)
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds()), "µs-median")
		b.ReportMetric(float64(ds[len(ds)*9/10].Microseconds()), "µs-p90")
	})
}
