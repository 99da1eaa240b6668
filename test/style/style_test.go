// Package style enforces project conventions that gofmt and vet do not check.
package style

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPackageDocs checks that every package has exactly one doc comment, of
// one sentence, starting with "Package <name>" (or "Command <name>").
func TestPackageDocs(t *testing.T) {
	root := filepath.Join("..", "..")
	dirs := map[string][]string{}
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "build" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") {
			dirs[filepath.Dir(path)] = append(dirs[filepath.Dir(path)], path)
		}
		return nil
	})
	for dir, files := range dirs {
		var docs []string
		var name string
		for _, f := range files {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatalf("parsing %s: %v", f, err)
			}
			name = strings.TrimSuffix(af.Name.Name, "_test")
			if af.Doc != nil {
				docs = append(docs, f+": "+strings.TrimSpace(af.Doc.Text()))
			}
		}
		if len(docs) != 1 {
			t.Errorf("package %s in %s has %d doc comments, want exactly 1: %v", name, dir, len(docs), docs)
			continue
		}
		text := docs[0][strings.Index(docs[0], ": ")+2:]
		if !strings.HasPrefix(text, "Package "+name+" ") && !strings.HasPrefix(text, "Command ") {
			t.Errorf("doc of %s should start with %q: %q", dir, "Package "+name, text)
		}
		if strings.Count(strings.TrimSuffix(text, "."), ". ") > 0 || !strings.HasSuffix(text, ".") {
			t.Errorf("doc of %s should be one sentence: %q", dir, text)
		}
	}
}
