package xbps

import "testing"

func TestSplitPkgver(t *testing.T) {
	for _, tc := range []struct {
		in            string
		name, version string
		ok            bool
	}{
		{"glibc-2.39_1", "glibc", "2.39_1", true},
		{"docker-compose-2.29.7_1", "docker-compose", "2.29.7_1", true},
		{"linux6.12-6.12.68_1", "linux6.12", "6.12.68_1", true},
		{"awk-0_1", "awk", "0_1", true},
		{"gtk+3-3.24.43_2", "gtk+3", "3.24.43_2", true},
		{"glibc", "", "", false},
		{"glibc-2.39", "", "", false},     // no revision
		{"glibc-2.39_x", "", "", false},   // revision not a number
		{"glibc-abc_1", "", "", false},    // no digit in the version
		{"-2.39_1", "", "", false},        // no name
		{"glibc-2_39_1", "", "", false},   // two revisions
		{"docker-compose", "", "", false}, // a name with a dash
		{"glibc>=2.32_1", "", "", false},  // a pattern
		{"foo-1.0_1-", "", "", false},     // trailing dash
		{"python3-3.12.7_1", "python3", "3.12.7_1", true},
	} {
		name, version, ok := SplitPkgver(tc.in)
		if name != tc.name || version != tc.version || ok != tc.ok {
			t.Errorf("SplitPkgver(%q) = %q, %q, %v, want %q, %q, %v", tc.in, name, version, ok, tc.name, tc.version, tc.ok)
		}
	}
}

func TestPatternName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"glibc>=2.32_1", "glibc"},
		{"glibc<3", "glibc"},
		{"foo>1.0<2.0", "foo"},
		{"foo-[0-9]*", "foo"},
		{"foo-1.0_1", "foo"},
		{"docker-compose", "docker-compose"},
		{"docker-compose>=2.0_1", "docker-compose"},
	} {
		if got := PatternName(tc.in); got != tc.want {
			t.Errorf("PatternName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"1.0", "1.0", 0},
		{"1.0", "1.0.0", 0},
		{"1.0", "1.1", -1},
		{"1.10", "1.9", 1},
		{"2.39_1", "2.39_2", -1},
		{"2.39_10", "2.39_9", 1},
		{"2.40_1", "2.39_9", 1},
		{"1.0rc1", "1.0", -1},
		{"1.0alpha", "1.0beta", -1},
		{"1.0beta", "1.0rc1", -1},
		{"1.0pre1", "1.0rc1", 0},
		{"1.0pl1", "1.0.1", 0},
		{"1.2a", "1.2", 1},
		{"1.2a", "1.2b", -1},
		{"1.2a", "1.2.1", 0},
		{"9.2p1", "9.2", 1},
		{"6.12.68_1", "6.12.9_1", 1},
		{"20251110", "20250101", 1},
		{"0_1", "0_1", 0},
	} {
		if got := CompareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
		if got := CompareVersions(tc.b, tc.a); got != -tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.b, tc.a, got, -tc.want)
		}
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pkg, pattern string
		want         bool
	}{
		{"glibc-2.39_1", "glibc>=2.32_1", true},
		{"glibc-2.31_1", "glibc>=2.32_1", false},
		{"glibc-2.32_1", "glibc>=2.32_1", true},
		{"glibc-2.32_1", "glibc>2.32_1", false},
		{"glibc-2.32_2", "glibc>2.32_1", true},
		{"glibc-2.39_1", "glibc<2.40", true},
		{"glibc-2.40_1", "glibc<2.40", false},
		{"glibc-2.40_1", "glibc<=2.40_1", true},
		{"foo-1.5_1", "foo>=1.0<2.0", true},
		{"foo-2.0_1", "foo>=1.0<2.0", false},
		{"foo-0.9_1", "foo>=1.0<2.0", false},
		{"foo-1.5_1", "foo>1.0<=1.5_1", true},
		{"foo-1.0_1", "foo-1.0_1", true},
		{"foo-1.0_2", "foo-1.0_1", false},
		{"foo-1.0_1", "foo", true},
		{"foobar-1.0_1", "foo", false},
		{"foo-1.0_1", "foo-[0-9]*", true},
		{"foo-bar-1.0_1", "foo-[0-9]*", false},
		{"foo-1.2.3_1", "foo-1.*", true},
		{"foo-2.0_1", "foo-1.*", false},
		{"bar-1.0_1", "foo>=0", false},
		{"docker-compose-2.29_1", "docker-compose>=2.0_1", true},
		{"docker-compose-2.29_1", "docker>=2.0_1", false},
		{"awk-0_1", "awk", true},
		{"awk-0_1", "awk>=0", true},
		// xbps reads only < and > as relational, as it does.
		{"foo-1.0_1", "foo!=1.0_1", false},
		{"foo-1.0_1", "foo==1.0_1", false},
	} {
		if got := Match(tc.pkg, tc.pattern); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pkg, tc.pattern, got, tc.want)
		}
	}
}
