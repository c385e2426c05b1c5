package compat

// The differential harness of the Go suite (the same contract as compat/lib/harness.mjs): a
// scenario runs once per target ("direct" = the upstream, "gateway" = through mongomux) and
// returns an outcome, compared between the two, and info, only recorded. One JSON line per
// target and one verdict line go to $COMPAT_RESULTS.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"reflect"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

const (
	suiteName  = "go"
	driverName = "go"
)

var targets = []string{"direct", "gateway"}

func env(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: run the suites through compat/run", name)
	}
	return v
}

type targetURIs struct {
	plain, sha256, sha1, seed, txn, restartName, iam string
}

func uris(t *testing.T, target string) targetURIs {
	up := "GATEWAY"
	seed := env(t, "COMPAT_GATEWAY_SEED_URI")
	if target == "direct" {
		up = "DIRECT"
		seed = env(t, "COMPAT_DIRECT_URI")
	}
	return targetURIs{
		plain:       env(t, "COMPAT_"+up+"_URI"),
		sha256:      env(t, "COMPAT_"+up+"_SHA256_URI"),
		sha1:        env(t, "COMPAT_"+up+"_SHA1_URI"),
		seed:        seed,
		txn:         env(t, "COMPAT_TXN_"+up+"_URI"),
		restartName: env(t, "COMPAT_RESTART_"+up),
		iam:         env(t, "COMPAT_"+up+"_IAM_URI"),
	}
}

func withOptions(uri, opts string) string {
	if strings.Contains(uri, "?") {
		return uri + "&" + opts
	}
	return uri + "?" + opts
}

func withPassword(t *testing.T, uri, password string) string {
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), password)
	return u.String()
}

func dbName(scenario, target string) string {
	name := "compat_go_" + strings.ReplaceAll(scenario, "-", "_") + "_" + target[:1]
	if len(name) > 60 {
		name = name[:60]
	}
	return name
}

func driverVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "go.mongodb.org/mongo-driver/v2" {
				return d.Version
			}
		}
	}
	// A `go test` binary may carry no dependency list: the version go.mod requires is the one
	// built (-mod=readonly, go.sum committed).
	if b, err := os.ReadFile("go.mod"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			for i := 0; i+1 < len(f); i++ {
				if f[i] == "go.mongodb.org/mongo-driver/v2" {
					return f[i+1]
				}
			}
		}
	}
	return "?"
}

// errorShape is what of an error is compared: kind, code, codeName, labels (never the message).
func errorShape(err error) map[string]any {
	if err == nil {
		return nil
	}
	shape := map[string]any{"kind": "other", "code": nil, "codeName": nil, "labels": []string{}}
	var ce mongo.CommandError
	var we mongo.WriteException
	var bwe mongo.BulkWriteException
	switch {
	case errors.As(err, &ce):
		shape["kind"], shape["code"], shape["codeName"], shape["labels"] = "CommandError", ce.Code, ce.Name, sorted(ce.Labels)
	case errors.As(err, &we):
		shape["kind"], shape["labels"] = "WriteException", sorted(we.Labels)
		if len(we.WriteErrors) > 0 {
			shape["code"] = we.WriteErrors[0].Code
		}
	case errors.As(err, &bwe):
		shape["kind"], shape["labels"] = "BulkWriteException", sorted(bwe.Labels)
		if len(bwe.WriteErrors) > 0 {
			shape["code"] = bwe.WriteErrors[0].Code
		}
	}
	if mongo.IsNetworkError(err) {
		shape["network"] = true
	}
	if mongo.IsTimeout(err) {
		shape["timeout"] = true
	}
	return shape
}

func sorted(s []string) []string {
	out := append([]string{}, s...)
	sort.Strings(out)
	return out
}

// events collects what a client's monitors saw; the driver calls the monitors concurrently.
type events struct {
	mu         sync.Mutex
	started    []string
	succeeded  []*event.CommandSucceededEvent
	failed     []*event.CommandFailedEvent
	heartbeats []bool // Awaited, per heartbeat started
	servers    map[string]string
	compress   map[string][]string
}

func (e *events) startedNamed(from int, name string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, s := range e.started[from:] {
		if s == name {
			n++
		}
	}
	return n
}

func (e *events) counts() (started, succeeded, failed int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.started), len(e.succeeded), len(e.failed)
}

func (e *events) serverKinds() map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]string{}
	for k, v := range e.servers {
		out[k] = v
	}
	return out
}

// connect makes a client with command and SDAM monitoring; `t.Cleanup` disconnects it.
func connect(t *testing.T, uri string, extra ...*options.ClientOptions) (*mongo.Client, *events) {
	t.Helper()
	ev := &events{servers: map[string]string{}, compress: map[string][]string{}}
	opts := options.Client().ApplyURI(uri).SetServerSelectionTimeout(10 * time.Second).
		SetMonitor(&event.CommandMonitor{
			Started: func(_ context.Context, e *event.CommandStartedEvent) {
				ev.mu.Lock()
				ev.started = append(ev.started, e.CommandName)
				ev.mu.Unlock()
			},
			Succeeded: func(_ context.Context, e *event.CommandSucceededEvent) {
				ev.mu.Lock()
				ev.succeeded = append(ev.succeeded, e)
				ev.mu.Unlock()
			},
			Failed: func(_ context.Context, e *event.CommandFailedEvent) {
				ev.mu.Lock()
				ev.failed = append(ev.failed, e)
				ev.mu.Unlock()
			},
		}).
		SetServerMonitor(&event.ServerMonitor{
			ServerHeartbeatStarted: func(e *event.ServerHeartbeatStartedEvent) {
				ev.mu.Lock()
				ev.heartbeats = append(ev.heartbeats, e.Awaited)
				ev.mu.Unlock()
			},
			TopologyDescriptionChanged: func(e *event.TopologyDescriptionChangedEvent) {
				ev.mu.Lock()
				for _, s := range e.NewDescription.Servers {
					ev.servers[s.Addr.String()] = s.Kind
					ev.compress[s.Addr.String()] = s.Compression
				}
				ev.mu.Unlock()
			},
		})
	all := append([]*options.ClientOptions{opts}, extra...)
	client, err := mongo.Connect(all...)
	if err != nil {
		t.Fatalf("mongo.Connect: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Disconnect(ctx)
	})
	return client, ev
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// freshDB drops and returns the scenario's database.
func freshDB(t *testing.T, client *mongo.Client, scenario, target string) *mongo.Database {
	db := client.Database(dbName(scenario, target))
	if err := db.Drop(ctx(t)); err != nil {
		t.Fatalf("drop %s: %v", db.Name(), err)
	}
	return db
}

// docs turns BSON documents into plain JSON values (relaxed extended JSON), the form compared.
func docs(t *testing.T, raws []bson.Raw) []any {
	out := make([]any, 0, len(raws))
	for _, r := range raws {
		out = append(out, plainDoc(t, r))
	}
	return out
}

func plainDoc(t *testing.T, r bson.Raw) any {
	if r == nil {
		return nil
	}
	b, err := bson.MarshalExtJSON(r, false, false)
	if err != nil {
		t.Fatalf("extjson: %v", err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func findAll(t *testing.T, coll *mongo.Collection, filter any, opts ...options.Lister[options.FindOptions]) []any {
	t.Helper()
	cur, err := coll.Find(ctx(t), filter, opts...)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	var raws []bson.Raw
	if err := cur.All(ctx(t), &raws); err != nil {
		t.Fatalf("cursor: %v", err)
	}
	return docs(t, raws)
}

func ids(t *testing.T, coll *mongo.Collection) []any {
	out := []any{}
	for _, d := range findAll(t, coll, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}})) {
		out = append(out, d.(map[string]any)["_id"])
	}
	return out
}

// ctlFreeze SIGSTOPs the named server (compat/ctl).
func ctlFreeze(t *testing.T, name string) {
	out, err := exec.Command(env(t, "COMPAT_CTL"), "freeze", name).CombinedOutput()
	if err != nil {
		t.Fatalf("ctl freeze %s: %v: %s", name, err, out)
	}
}

// ctlRestartLater starts `ctl restart NAME DELAY_MS`; the returned function waits for it.
func ctlRestartLater(t *testing.T, name string, delayMs int) func() string {
	cmd := exec.Command(env(t, "COMPAT_CTL"), "restart", name, fmt.Sprint(delayMs))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("ctl restart: %v", err)
	}
	return func() string {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("ctl restart %s: %v: %s", name, err, out.String())
		}
		return strings.TrimSpace(out.String())
	}
}

type known struct {
	ID, Driver, Scenario string
}

func knownDifference(t *testing.T, scenario string) *known {
	b, err := os.ReadFile(env(t, "COMPAT_KNOWN"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Differences []known }
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	for _, k := range f.Differences {
		if (k.Driver == driverName || k.Driver == "*") && k.Scenario == scenario {
			return &k
		}
	}
	return nil
}

var resultsMu sync.Mutex

func record(t *testing.T, rec map[string]any) {
	rec["ts"] = time.Now().UTC().Format(time.RFC3339Nano)
	rec["suite"], rec["driver"], rec["driver_version"] = suiteName, driverName, driverVersion()
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	resultsMu.Lock()
	defer resultsMu.Unlock()
	f, err := os.OpenFile(env(t, "COMPAT_RESULTS"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(append(b, '\n')); err != nil {
		t.Fatal(err)
	}
}

// plain gives any value its JSON form, so both sides compare the way the report shows them.
func plain(t *testing.T, v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("outcome is not JSON: %v", err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

type side struct {
	Status  string         `json:"status"`
	Outcome any            `json:"outcome"`
	Info    map[string]any `json:"info"`
	Ms      int64          `json:"ms"`
}

// scenarioFunc runs one scenario on one target. A returned error (or t.Fatal in a subtest) is
// the scenario failing; an expected server error belongs in the outcome instead.
type scenarioFunc func(t *testing.T, target string) (outcome any, info map[string]any, err error)

func differential(t *testing.T, scenario string, run scenarioFunc) map[string]side {
	res := map[string]side{}
	for _, target := range targets {
		start := time.Now()
		var s side
		// Each target in a subtest of its own: a t.Fatal there ends only that side.
		ok := t.Run(target, func(st *testing.T) {
			out, info, err := run(st, target)
			if err != nil {
				s = side{Status: "error", Outcome: map[string]any{"exception": errorShape(err)}, Info: map[string]any{"message": err.Error()}}
				return
			}
			if info == nil {
				info = map[string]any{}
			}
			s = side{Status: "ok", Outcome: plain(st, out), Info: plain(st, info).(map[string]any)}
		})
		if !ok && s.Status == "" {
			s = side{Status: "error", Outcome: map[string]any{"exception": "scenario failed (see test log)"}, Info: map[string]any{}}
		}
		s.Ms = time.Since(start).Milliseconds()
		record(t, map[string]any{"scenario": scenario, "target": target, "status": s.Status, "outcome": s.Outcome, "info": s.Info, "ms": s.Ms})
		res[target] = s
	}
	same := reflect.DeepEqual(res["direct"].Outcome, res["gateway"].Outcome)
	bothOk := res["direct"].Status == "ok" && res["gateway"].Status == "ok"
	k := knownDifference(t, scenario)
	verdict := "same"
	switch {
	case !same && k != nil:
		verdict = "known-difference"
	case !same:
		verdict = "differs"
	case !bothOk && k != nil:
		verdict = "known-difference"
	case !bothOk:
		verdict = "error"
	}
	var kid any
	if k != nil {
		kid = k.ID
	}
	record(t, map[string]any{"scenario": scenario, "target": "verdict", "verdict": verdict, "known": kid})
	if verdict == "differs" || verdict == "error" {
		d, _ := json.Marshal(res["direct"])
		g, _ := json.Marshal(res["gateway"])
		t.Errorf("%s: %s\n  direct:  %s\n  gateway: %s", scenario, verdict, d, g)
	}
	return res
}

func notYet(t *testing.T, scenario, reason string) {
	for _, target := range targets {
		record(t, map[string]any{"scenario": scenario, "target": target, "status": "not-yet", "outcome": nil, "info": map[string]any{"reason": reason}})
	}
	record(t, map[string]any{"scenario": scenario, "target": "verdict", "verdict": "not-yet", "reason": reason})
	t.Skip(reason)
}
