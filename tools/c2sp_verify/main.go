// Command c2sp_verify checks pacspace checkpoints with Go's golang.org/x/mod/sumdb/note and
// golang.org/x/mod/sumdb/tlog, the reference signed-note and tlog implementations, as a third party would.
//
// Each FILE holds one checkpoint (a signed note). For each, it checks:
//   - note.Open accepts it with the log's vkey (note.NewVerifier, type 0x01) and the witnesses'
//     cosignature vkeys (type 0x04; the cosigned message of c2sp.org/tlog-cosignature is built here);
//   - the log's signature and every -witness key named with -require verified;
//   - no two signature lines carry the same key name and key ID (note.Open drops such repeats
//     silently; verifiers that refuse them would reject the note);
//   - the body is exactly origin, decimal size and base64 root (c2sp.org/tlog-checkpoint).
//
// With -url, it also reads the log's C2SP tiles through tlog.TileHashReader (which authenticates
// every tile against the checkpoint's root), checks with tlog.ProveTree and tlog.CheckTree that each
// checkpoint is consistent with the next larger one, and checks every entry of the largest
// checkpoint's entry bundles with tlog.ProveRecord and tlog.CheckRecord.
//
// Build without the network, from Debian's golang-go and golang-golang-x-mod-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o c2sp_verify tools/c2sp_verify/main.go
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type cosignatureVerifier struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

func (v *cosignatureVerifier) Name() string    { return v.name }
func (v *cosignatureVerifier) KeyHash() uint32 { return v.hash }

// Verify checks a c2sp.org/tlog-cosignature Ed25519 cosignature: uint64 BE timestamp || signature over
// "cosignature/v1\ntime <timestamp>\n" || the note text.
func (v *cosignatureVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig[:8])
	if t == 0 || t >= 1<<63 {
		return false
	}
	signed := append([]byte(fmt.Sprintf("cosignature/v1\ntime %d\n", t)), msg...)
	return ed25519.Verify(v.key, signed, sig[8:])
}

func newCosignatureVerifier(vkey string) (note.Verifier, error) {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return nil, errors.New("malformed vkey")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) != 1+ed25519.PublicKeySize || raw[0] != 0x04 {
		return nil, errors.New("not a type 0x04 Ed25519 cosignature vkey")
	}
	id := sha256.Sum256(append([]byte(parts[0]+"\n"), raw...))
	hash := binary.BigEndian.Uint32(id[:4])
	if fmt.Sprintf("%08x", hash) != parts[1] {
		return nil, errors.New("vkey key ID does not match its key")
	}
	return &cosignatureVerifier{name: parts[0], hash: hash, key: ed25519.PublicKey(raw[1:])}, nil
}

type checkpoint struct {
	file   string
	origin string
	tree   tlog.Tree
}

func parseBody(text string) (string, tlog.Tree, error) {
	lines := strings.Split(text, "\n")
	if len(lines) != 4 || lines[3] != "" {
		return "", tlog.Tree{}, errors.New("body is not exactly origin, size and root lines")
	}
	n, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != lines[1] {
		return "", tlog.Tree{}, errors.New("size is not a canonical decimal")
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize || base64.StdEncoding.EncodeToString(root) != lines[2] {
		return "", tlog.Tree{}, errors.New("root is not a canonical base64 SHA-256 hash")
	}
	var h tlog.Hash
	copy(h[:], root)
	return lines[0], tlog.Tree{N: n, Hash: h}, nil
}

func repeatedKey(msg []byte) error {
	i := bytes.LastIndex(msg, []byte("\n\n"))
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSuffix(string(msg[i+2:]), "\n"), "\n") {
		fields := strings.SplitN(strings.TrimPrefix(line, "\u2014 "), " ", 2)
		raw, err := base64.StdEncoding.DecodeString(fields[len(fields)-1])
		if err != nil || len(raw) < 4 {
			return fmt.Errorf("unreadable signature line %q", line)
		}
		key := fields[0] + "+" + fmt.Sprintf("%x", raw[:4])
		if seen[key] {
			return fmt.Errorf("two signature lines from key %s", key)
		}
		seen[key] = true
	}
	return nil
}

// tiles reads C2SP tlog-tiles: Go's tile/8/L/N is c2sp's tile/L/N (the height is always 8).
type tiles struct{ base string }

func (t tiles) Height() int { return 8 }

func (t tiles) ReadTiles(ts []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(ts))
	for i, tile := range ts {
		path := strings.Replace(tile.Path(), "tile/8/", "tile/", 1)
		data, err := get(t.base + "/" + path)
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (t tiles) SaveTiles([]tlog.Tile, [][]byte) {}

func get(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

func checkEntries(base string, tree tlog.Tree, reader tlog.HashReader) (int64, error) {
	var index int64
	for n := int64(0); n*256 < tree.N; n++ {
		tile := tlog.Tile{H: 8, L: -1, N: n, W: int(min64(256, tree.N-n*256))}
		path := strings.Replace(tile.Path(), "tile/8/data/", "tile/entries/", 1)
		data, err := get(base + "/" + path)
		if err != nil {
			return index, err
		}
		for len(data) > 0 {
			if len(data) < 2 || len(data) < 2+int(binary.BigEndian.Uint16(data)) {
				return index, fmt.Errorf("%s: truncated entry", path)
			}
			size := int(binary.BigEndian.Uint16(data))
			entry := data[2 : 2+size]
			data = data[2+size:]
			proof, err := tlog.ProveRecord(tree.N, index, reader)
			if err != nil {
				return index, err
			}
			if err := tlog.CheckRecord(proof, tree.N, tree.Hash, index, tlog.RecordHash(entry)); err != nil {
				return index, fmt.Errorf("entry %d: %v", index, err)
			}
			index++
		}
	}
	if index != tree.N {
		return index, fmt.Errorf("the entry bundles hold %d entries, not %d", index, tree.N)
	}
	return index, nil
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	logKey := flag.String("log", "", "the log's vkey (type 0x01)")
	var witnesses, require list
	flag.Var(&witnesses, "witness", "a witness's cosignature vkey (type 0x04); repeatable")
	flag.Var(&require, "require", "a witness key name whose cosignature every checkpoint must carry; repeatable")
	base := flag.String("url", "", "the log's base URL: also check tiles, consistency and entries")
	flag.Parse()
	logVerifier, err := note.NewVerifier(*logKey)
	if err != nil {
		fail("log vkey: %v", err)
	}
	verifiers := []note.Verifier{logVerifier}
	for _, w := range witnesses {
		v, err := newCosignatureVerifier(w)
		if err != nil {
			fail("witness vkey %s: %v", w, err)
		}
		verifiers = append(verifiers, v)
	}
	known := note.VerifierList(verifiers...)
	var checkpoints []checkpoint
	for _, file := range flag.Args() {
		msg, err := os.ReadFile(file)
		if err != nil {
			fail("%v", err)
		}
		n, err := note.Open(msg, known)
		if err != nil {
			fail("%s: note.Open: %v", file, err)
		}
		if err := repeatedKey(msg); err != nil {
			fail("%s: %v", file, err)
		}
		signed := map[string]bool{}
		for _, sig := range n.Sigs {
			signed[sig.Name+"+"+fmt.Sprintf("%08x", sig.Hash)] = true
		}
		if !signed[logVerifier.Name()+"+"+fmt.Sprintf("%08x", logVerifier.KeyHash())] {
			fail("%s: no signature by the log's key", file)
		}
		for _, name := range require {
			found := false
			for _, sig := range n.Sigs {
				found = found || sig.Name == name
			}
			if !found {
				fail("%s: no verified cosignature by %s", file, name)
			}
		}
		origin, tree, err := parseBody(n.Text)
		if err != nil {
			fail("%s: %v", file, err)
		}
		if origin != logVerifier.Name() {
			fail("%s: origin %q is not the log key's name", file, origin)
		}
		checkpoints = append(checkpoints, checkpoint{file, origin, tree})
		fmt.Printf("ok: %s: %s size %d, %d verified signatures, %d unverified\n", file, origin, tree.N, len(n.Sigs), len(n.UnverifiedSigs))
	}
	if *base == "" || len(checkpoints) == 0 {
		return
	}
	sort.Slice(checkpoints, func(i, j int) bool { return checkpoints[i].tree.N < checkpoints[j].tree.N })
	for i := 0; i+1 < len(checkpoints); i++ {
		older, newer := checkpoints[i].tree, checkpoints[i+1].tree
		if older.N == newer.N {
			if older.Hash != newer.Hash {
				fail("%s and %s: same size, different roots", checkpoints[i].file, checkpoints[i+1].file)
			}
			continue
		}
		if older.N == 0 { // the empty tree is consistent with every tree; tlog proves only from size 1
			if older.Hash != tlog.Hash(sha256.Sum256(nil)) {
				fail("%s: size 0 with a root that is not SHA-256 of nothing", checkpoints[i].file)
			}
			continue
		}
		reader := tlog.TileHashReader(newer, tiles{*base})
		proof, err := tlog.ProveTree(newer.N, older.N, reader)
		if err != nil {
			fail("consistency %d -> %d: %v", older.N, newer.N, err)
		}
		if err := tlog.CheckTree(proof, newer.N, newer.Hash, older.N, older.Hash); err != nil {
			fail("consistency %d -> %d: %v", older.N, newer.N, err)
		}
	}
	largest := checkpoints[len(checkpoints)-1].tree
	count, err := checkEntries(*base, largest, tlog.TileHashReader(largest, tiles{*base}))
	if err != nil {
		fail("entries: %v", err)
	}
	fmt.Printf("ok: %d checkpoints consistent; all %d entries of size %d proven from the tiles\n", len(checkpoints), count, largest.N)
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "c2sp_verify: "+format+"\n", args...)
	os.Exit(1)
}
