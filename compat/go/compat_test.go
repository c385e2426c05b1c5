package compat

// The official Go driver (go.mongodb.org/mongo-driver/v2), unchanged, straight against the
// upstream and through mongomux: every scenario of compat/scenarios.json, compared.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func must(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func pingOK(t *testing.T, client *mongo.Client) (any, error) {
	var reply bson.Raw
	reply, err := client.Database("admin").RunCommand(ctx(t), bson.D{{Key: "ping", Value: 1}}).Raw()
	if err != nil {
		return nil, err
	}
	return plainDoc(t, reply).(map[string]any)["ok"], nil
}

// --- connect -------------------------------------------------------------------------------------

func TestConnect(t *testing.T) {
	for _, c := range []struct{ id, mech string }{{"connect-scram-sha-256", "sha256"}, {"connect-scram-sha-1", "sha1"}} {
		t.Run(c.id, func(t *testing.T) {
			differential(t, c.id, func(t *testing.T, target string) (any, map[string]any, error) {
				u := uris(t, target)
				uri := u.sha256
				if c.mech == "sha1" {
					uri = u.sha1
				}
				client, ev := connect(t, uri)
				o := map[string]any{}
				ping, err := pingOK(t, client)
				if err != nil {
					return nil, nil, err
				}
				o["ping"] = ping
				coll := freshDB(t, client, c.id, target).Collection("c")
				_, err = coll.InsertOne(ctx(t), bson.D{{Key: "_id", Value: 1}, {Key: "who", Value: c.mech}})
				must(t, err, "insert")
				o["found"] = findAll(t, coll, bson.D{})
				// A wrong password: the error's code and labels are compared.
				bad, _ := connect(t, withPassword(t, uri, "not-the-password"), options.Client().SetServerSelectionTimeout(5*time.Second))
				if _, err := pingOK(t, bad); err != nil {
					o["wrongPassword"] = errorShape(err)
				} else {
					o["wrongPassword"] = "accepted"
				}
				awaited := 0
				for _, a := range ev.heartbeats {
					if a {
						awaited++
					}
				}
				return o, map[string]any{"serverKinds": ev.serverKinds(), "awaitedHeartbeats": awaited}, nil
			})
		})
	}
}

// --- CRUD ----------------------------------------------------------------------------------------

func TestCRUD(t *testing.T) {
	differential(t, "crud", func(t *testing.T, target string) (any, map[string]any, error) {
		client, _ := connect(t, uris(t, target).plain)
		coll := freshDB(t, client, "crud", target).Collection("items")
		c := ctx(t)
		o := map[string]any{}
		doc := func(id, n int, tag string) bson.D {
			return bson.D{{Key: "_id", Value: id}, {Key: "n", Value: n}, {Key: "tag", Value: tag}}
		}
		r1, err := coll.InsertOne(c, doc(1, 1, "a"))
		must(t, err, "insertOne")
		o["insertOne"] = r1.InsertedID
		rm, err := coll.InsertMany(c, []any{doc(2, 2, "b"), doc(3, 3, "a"), doc(4, 4, "b"), doc(5, 5, "a")})
		must(t, err, "insertMany")
		o["insertMany"] = len(rm.InsertedIDs)
		findOne := func(filter bson.D) any {
			raw, err := coll.FindOne(c, filter).Raw()
			if errors.Is(err, mongo.ErrNoDocuments) {
				return nil
			}
			must(t, err, "findOne")
			return plainDoc(t, raw)
		}
		o["findOne"] = findOne(bson.D{{Key: "_id", Value: 3}})
		o["findMissing"] = findOne(bson.D{{Key: "_id", Value: 99}})
		u1, err := coll.UpdateOne(c, bson.D{{Key: "_id", Value: 2}}, bson.D{{Key: "$set", Value: bson.D{{Key: "tag", Value: "c"}}}})
		must(t, err, "updateOne")
		o["updateOne"] = []int64{u1.MatchedCount, u1.ModifiedCount}
		u2, err := coll.UpdateMany(c, bson.D{{Key: "n", Value: bson.D{{Key: "$gte", Value: 3}}}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 10}}}})
		must(t, err, "updateMany")
		o["updateMany"] = []int64{u2.MatchedCount, u2.ModifiedCount}
		u3, err := coll.UpdateOne(c, bson.D{{Key: "_id", Value: 6}}, bson.D{{Key: "$set", Value: bson.D{{Key: "n", Value: 6}, {Key: "tag", Value: "u"}}}}, options.UpdateOne().SetUpsert(true))
		must(t, err, "upsert")
		o["upsert"] = []any{u3.MatchedCount, u3.ModifiedCount, u3.UpsertedCount, u3.UpsertedID}
		r, err := coll.ReplaceOne(c, bson.D{{Key: "_id", Value: 4}}, bson.D{{Key: "n", Value: 40}, {Key: "tag", Value: "r"}})
		must(t, err, "replaceOne")
		o["replaceOne"] = []int64{r.MatchedCount, r.ModifiedCount}
		raw, err := coll.FindOneAndUpdate(c, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: bson.D{{Key: "tag", Value: "z"}}}},
			options.FindOneAndUpdate().SetReturnDocument(options.After)).Raw()
		must(t, err, "findOneAndUpdate")
		o["findOneAndUpdate"] = plainDoc(t, raw)
		raw, err = coll.FindOneAndDelete(c, bson.D{{Key: "_id", Value: 6}}).Raw()
		must(t, err, "findOneAndDelete")
		o["findOneAndDelete"] = plainDoc(t, raw)
		d1, err := coll.DeleteOne(c, bson.D{{Key: "_id", Value: 5}})
		must(t, err, "deleteOne")
		o["deleteOne"] = d1.DeletedCount
		d2, err := coll.DeleteMany(c, bson.D{{Key: "tag", Value: "a"}})
		must(t, err, "deleteMany")
		o["deleteMany"] = d2.DeletedCount
		o["countDocuments"], err = coll.CountDocuments(c, bson.D{})
		must(t, err, "countDocuments")
		o["estimatedDocumentCount"], err = coll.EstimatedDocumentCount(c)
		must(t, err, "estimatedDocumentCount")
		// DistinctResult.Decode into a []string fails ("error decoding key arr: unexpected EOF",
		// straight to FerretDB too): read the raw array instead.
		// And without a deadline on the context: with one, the driver adds maxTimeMS, which
		// FerretDB 1.24's distinct rejects ("unknown field").
		arr, err := coll.Distinct(context.Background(), "tag", bson.D{}).Raw()
		must(t, err, "distinct")
		vals, err := arr.Values()
		must(t, err, "distinct values")
		tags := []string{}
		for _, v := range vals {
			tags = append(tags, v.StringValue())
		}
		sort.Strings(tags)
		o["distinct"] = tags
		o["projection"] = findAll(t, coll, bson.D{}, options.Find().SetProjection(bson.D{{Key: "_id", Value: 0}, {Key: "tag", Value: 1}}).SetSort(bson.D{{Key: "tag", Value: 1}}))
		o["skipLimit"] = findAll(t, coll, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: -1}}).SetSkip(1).SetLimit(1))
		o["all"] = findAll(t, coll, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
		return o, nil, nil
	})
}

// --- bulk writes with a duplicate key mid-batch ------------------------------------------------------

func bulkShape(err error, inserted int, res *mongo.BulkWriteResult) any {
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) {
		return map[string]any{"exception": errorShape(err)}
	}
	we := []map[string]any{}
	for _, e := range bwe.WriteErrors {
		we = append(we, map[string]any{"index": e.Index, "code": e.Code})
	}
	out := map[string]any{"writeErrors": we, "insertedCount": inserted}
	if res != nil {
		out["insertedCount"] = res.InsertedCount
		out["counts"] = []int64{res.InsertedCount, res.MatchedCount, res.ModifiedCount, res.DeletedCount}
	}
	return out
}

func TestBulk(t *testing.T) {
	for _, ordered := range []bool{true, false} {
		id := "bulk-unordered-error"
		if ordered {
			id = "bulk-ordered-error"
		}
		t.Run(id, func(t *testing.T) {
			differential(t, id, func(t *testing.T, target string) (any, map[string]any, error) {
				client, _ := connect(t, uris(t, target).plain)
				db := freshDB(t, client, id, target)
				c := ctx(t)
				o := map[string]any{}
				im := db.Collection("im")
				res, err := im.InsertMany(c, []any{bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "_id", Value: 2}}, bson.D{{Key: "_id", Value: 2}}, bson.D{{Key: "_id", Value: 3}}},
					options.InsertMany().SetOrdered(ordered))
				if err == nil {
					o["insertMany"] = map[string]any{"accepted": len(res.InsertedIDs)}
				} else {
					n := 0
					if res != nil {
						n = len(res.InsertedIDs)
					}
					o["insertMany"] = bulkShape(err, n, nil)
				}
				o["insertManyAfter"] = ids(t, im)
				bw := db.Collection("bw")
				models := []mongo.WriteModel{
					mongo.NewInsertOneModel().SetDocument(bson.D{{Key: "_id", Value: 10}}),
					mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: 10}}).SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "x", Value: 1}}}}),
					mongo.NewInsertOneModel().SetDocument(bson.D{{Key: "_id", Value: 10}}),
					mongo.NewDeleteOneModel().SetFilter(bson.D{{Key: "_id", Value: 10}}),
					mongo.NewInsertOneModel().SetDocument(bson.D{{Key: "_id", Value: 11}}),
				}
				br, err := bw.BulkWrite(c, models, options.BulkWrite().SetOrdered(ordered))
				if err == nil {
					o["bulkWrite"] = map[string]any{"accepted": []int64{br.InsertedCount, br.MatchedCount, br.ModifiedCount, br.DeletedCount}}
				} else {
					o["bulkWrite"] = bulkShape(err, 0, br)
				}
				o["bulkWriteAfter"] = findAll(t, bw, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
				return o, nil, nil
			})
		})
	}
}

// --- cursors -------------------------------------------------------------------------------------

func seed25(t *testing.T, db *mongo.Database) *mongo.Collection {
	coll := db.Collection("c")
	ds := make([]any, 25)
	for i := range ds {
		ds[i] = bson.D{{Key: "_id", Value: i}, {Key: "g", Value: i % 3}, {Key: "v", Value: i}}
	}
	_, err := coll.InsertMany(ctx(t), ds)
	must(t, err, "seed")
	return coll
}

func batchLen(t *testing.T, reply bson.Raw, field string) int {
	arr, err := reply.LookupErr("cursor", field)
	must(t, err, "cursor."+field)
	vals, err := arr.Array().Values()
	must(t, err, "batch")
	return len(vals)
}

func TestCursorBatches(t *testing.T) {
	differential(t, "cursor-batches", func(t *testing.T, target string) (any, map[string]any, error) {
		client, ev := connect(t, uris(t, target).plain)
		coll := seed25(t, freshDB(t, client, "cursor-batches", target))
		_, from, _ := ev.counts()
		all := findAll(t, coll, bson.D{}, options.Find().SetBatchSize(2).SetSort(bson.D{{Key: "_id", Value: 1}}))
		got := []any{}
		for _, d := range all {
			got = append(got, d.(map[string]any)["_id"])
		}
		o := map[string]any{"ids": got}
		next := []int{}
		exhausted := false
		ev.mu.Lock()
		for _, e := range ev.succeeded[from:] {
			switch e.CommandName {
			case "find":
				o["firstBatch"] = batchLen(t, e.Reply, "firstBatch")
			case "getMore":
				next = append(next, batchLen(t, e.Reply, "nextBatch"))
				exhausted = e.Reply.Lookup("cursor", "id").AsInt64() == 0
			}
		}
		ev.mu.Unlock()
		o["getMores"], o["nextBatches"], o["exhausted"] = len(next), next, exhausted
		return o, nil, nil
	})
}

func TestCursorEarlyClose(t *testing.T) {
	differential(t, "cursor-early-close", func(t *testing.T, target string) (any, map[string]any, error) {
		client, ev := connect(t, uris(t, target).plain)
		coll := seed25(t, freshDB(t, client, "cursor-early-close", target))
		c := ctx(t)
		_, from, fromFailed := ev.counts()
		cur, err := coll.Find(c, bson.D{}, options.Find().SetBatchSize(2).SetSort(bson.D{{Key: "_id", Value: 1}}))
		must(t, err, "find")
		read := []any{}
		for i := 0; i < 5 && cur.Next(c); i++ {
			read = append(read, plainDoc(t, cur.Current).(map[string]any)["_id"])
		}
		must(t, cur.Close(c), "close")
		o := map[string]any{"read": read}
		getMores := 0
		o["killCursors"] = "not sent"
		ev.mu.Lock()
		for _, e := range ev.succeeded[from:] {
			switch e.CommandName {
			case "getMore":
				getMores++
			case "killCursors":
				count := func(f string) any {
					v, err := e.Reply.LookupErr(f)
					if err != nil {
						return nil
					}
					vals, _ := v.Array().Values()
					return len(vals)
				}
				o["killCursors"] = map[string]any{"killed": count("cursorsKilled"), "notFound": count("cursorsNotFound"), "alive": count("cursorsAlive"), "unknown": count("cursorsUnknown")}
			}
		}
		for _, e := range ev.failed[fromFailed:] {
			if e.CommandName == "killCursors" {
				o["killCursors"] = map[string]any{"failed": errorShape(e.Failure)}
			}
		}
		ev.mu.Unlock()
		o["getMores"] = getMores
		o["countAfter"], err = coll.CountDocuments(c, bson.D{})
		must(t, err, "count")
		return o, nil, nil
	})
}

// --- aggregate -----------------------------------------------------------------------------------

func TestAggregate(t *testing.T) {
	differential(t, "aggregate", func(t *testing.T, target string) (any, map[string]any, error) {
		client, _ := connect(t, uris(t, target).plain)
		coll := seed25(t, freshDB(t, client, "aggregate", target))
		c := ctx(t)
		agg := func(pipeline bson.A, opts ...options.Lister[options.AggregateOptions]) []any {
			cur, err := coll.Aggregate(c, pipeline, opts...)
			must(t, err, "aggregate")
			var raws []bson.Raw
			must(t, cur.All(c, &raws), "aggregate cursor")
			return docs(t, raws)
		}
		// One accumulator per $group: FerretDB 1.24 computes only the first.
		grouped := agg(bson.A{
			bson.D{{Key: "$match", Value: bson.D{{Key: "v", Value: bson.D{{Key: "$gte", Value: 5}}}}}},
			bson.D{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$g"}, {Key: "total", Value: bson.D{{Key: "$sum", Value: "$v"}}}}}},
			bson.D{{Key: "$sort", Value: bson.D{{Key: "_id", Value: 1}}}},
		}, options.Aggregate().SetBatchSize(1))
		counted := agg(bson.A{bson.D{{Key: "$match", Value: bson.D{{Key: "g", Value: 1}}}}, bson.D{{Key: "$count", Value: "n"}}})
		return map[string]any{"grouped": grouped, "counted": counted}, nil, nil
	})
}

// --- indexes and a duplicate key ----------------------------------------------------------------------

func TestIndexDuplicateKey(t *testing.T) {
	differential(t, "index-duplicate-key", func(t *testing.T, target string) (any, map[string]any, error) {
		client, _ := connect(t, uris(t, target).plain)
		coll := freshDB(t, client, "index-duplicate-key", target).Collection("users")
		c := ctx(t)
		o := map[string]any{}
		name, err := coll.Indexes().CreateOne(c, mongo.IndexModel{Keys: bson.D{{Key: "email", Value: 1}}, Options: options.Index().SetUnique(true)})
		must(t, err, "createIndex")
		o["createIndex"] = name
		listed := func() any {
			cur, err := coll.Indexes().List(c)
			must(t, err, "listIndexes")
			var raws []bson.Raw
			must(t, cur.All(c, &raws), "listIndexes cursor")
			out := []map[string]any{}
			for _, r := range raws {
				d := plainDoc(t, r).(map[string]any)
				u, _ := d["unique"].(bool)
				out = append(out, map[string]any{"name": d["name"], "key": d["key"], "unique": u})
			}
			sort.Slice(out, func(i, j int) bool { return fmt.Sprint(out[i]["name"]) < fmt.Sprint(out[j]["name"]) })
			return out
		}
		o["indexes"] = listed()
		_, err = coll.InsertOne(c, bson.D{{Key: "_id", Value: 1}, {Key: "email", Value: "a@example.com"}})
		must(t, err, "insert")
		insert := func(d bson.D) any {
			if _, err := coll.InsertOne(c, d); err != nil {
				shape := errorShape(err)
				shape["isDuplicateKey"] = mongo.IsDuplicateKeyError(err)
				return shape
			}
			return "accepted"
		}
		o["duplicate"] = insert(bson.D{{Key: "_id", Value: 2}, {Key: "email", Value: "a@example.com"}})
		o["duplicateId"] = insert(bson.D{{Key: "_id", Value: 1}, {Key: "email", Value: "b@example.com"}})
		must(t, coll.Indexes().DropOne(c, "email_1"), "dropIndex")
		o["indexesAfter"] = listed()
		o["afterDrop"] = insert(bson.D{{Key: "_id", Value: 3}, {Key: "email", Value: "a@example.com"}})
		return o, nil, nil
	})
}

// --- retryable writes and reads across a connection drop ---------------------------------------------

// The server the client is connected to (FerretDB, or the gateway) is frozen, an operation is sent
// on the pooled connection (so it is surely in flight), then the server is killed and restarted on
// the same port under it: the driver's one retry must land on the restarted server.
func TestRetryableDrop(t *testing.T) {
	for _, kind := range []string{"write", "read"} {
		id := "retryable-" + kind + "-drop"
		t.Run(id, func(t *testing.T) {
			res := differential(t, id, func(t *testing.T, target string) (any, map[string]any, error) {
				u := uris(t, target)
				client, ev := connect(t, withOptions(u.plain, "retryWrites=true&retryReads=true"), options.Client().SetMaxPoolSize(1))
				coll := freshDB(t, client, id, target).Collection("r")
				c := ctx(t)
				_, err := coll.InsertOne(c, bson.D{{Key: "_id", Value: 1}})
				must(t, err, "warm-up insert")
				from, _, fromFailed := ev.counts()
				ctlFreeze(t, u.restartName)
				wait := ctlRestartLater(t, u.restartName, 700)
				var result any
				command := "insert"
				if kind == "write" {
					if _, err := coll.InsertOne(c, bson.D{{Key: "_id", Value: 2}}); err != nil {
						result = errorShape(err)
					} else {
						result = "ok"
					}
				} else {
					command = "find"
					cur, err := coll.Find(c, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
					if err != nil {
						result = errorShape(err)
					} else {
						var raws []bson.Raw
						if err := cur.All(c, &raws); err != nil {
							result = errorShape(err)
						} else {
							got := []any{}
							for _, d := range docs(t, raws) {
								got = append(got, d.(map[string]any)["_id"])
							}
							result = got
						}
					}
				}
				restartLog := wait()
				failed := []any{}
				ev.mu.Lock()
				for _, e := range ev.failed[fromFailed:] {
					if e.CommandName == command {
						failed = append(failed, errorShape(e.Failure)["network"])
					}
				}
				ev.mu.Unlock()
				// How many attempts the driver made is recorded, not compared: a driver that finds
				// its pooled connection dead before sending retries the connection, not the command.
				attempts := ev.startedNamed(from, command)
				o := map[string]any{"result": result, "after": ids(t, coll)}
				return o, map[string]any{"restart": restartLog, "attempts": attempts, "failedAttemptsNetwork": failed}, nil
			})
			// Through the gateway (a mongos to the driver) the operation succeeds, exactly once,
			// whatever the reference does.
			g, _ := res["gateway"].Outcome.(map[string]any)
			want := []any{"ok", []any{float64(1), float64(2)}}
			if kind == "read" {
				want = []any{[]any{float64(1)}, []any{float64(1)}}
			}
			if got := []any{g["result"], g["after"]}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("gateway %s: got %v, want %v", id, got, want)
			}
		})
	}
}

// --- sessions and transactions (nx-27017 directly / through the txn gateway) -----------------------

func TestTransactions(t *testing.T) {
	t.Run("txn-commit", func(t *testing.T) {
		differential(t, "txn-commit", func(t *testing.T, target string) (any, map[string]any, error) {
			client, _ := connect(t, uris(t, target).txn)
			db := freshDB(t, client, "txn-commit", target)
			c := ctx(t)
			_, err := db.Collection("a").InsertOne(c, bson.D{{Key: "_id", Value: 0}})
			must(t, err, "seed a")
			_, err = db.Collection("b").InsertOne(c, bson.D{{Key: "_id", Value: 0}})
			must(t, err, "seed b")
			o := map[string]any{}
			sess, err := client.StartSession()
			must(t, err, "startSession")
			defer sess.EndSession(c)
			_, err = sess.WithTransaction(c, func(sc context.Context) (any, error) {
				if _, err := db.Collection("a").InsertOne(sc, bson.D{{Key: "_id", Value: 1}}); err != nil {
					return nil, err
				}
				if _, err := db.Collection("b").UpdateOne(sc, bson.D{{Key: "_id", Value: 0}}, bson.D{{Key: "$set", Value: bson.D{{Key: "moved", Value: 1}}}}); err != nil {
					return nil, err
				}
				n, err := db.Collection("a").CountDocuments(sc, bson.D{})
				o["insideCount"] = n
				return nil, err
			})
			if err != nil {
				return nil, nil, err
			}
			sortID := options.Find().SetSort(bson.D{{Key: "_id", Value: 1}})
			o["a"] = findAll(t, db.Collection("a"), bson.D{}, sortID)
			o["b"] = findAll(t, db.Collection("b"), bson.D{}, sortID)
			return o, nil, nil
		})
	})
	t.Run("txn-abort", func(t *testing.T) {
		differential(t, "txn-abort", func(t *testing.T, target string) (any, map[string]any, error) {
			client, _ := connect(t, uris(t, target).txn)
			db := freshDB(t, client, "txn-abort", target)
			c := ctx(t)
			a := db.Collection("a")
			_, err := a.InsertOne(c, bson.D{{Key: "_id", Value: 0}, {Key: "n", Value: 0}})
			must(t, err, "seed")
			o := map[string]any{}
			sess, err := client.StartSession()
			must(t, err, "startSession")
			defer sess.EndSession(c)
			must(t, sess.StartTransaction(), "startTransaction")
			sc := mongo.NewSessionContext(c, sess)
			if _, err := a.InsertOne(sc, bson.D{{Key: "_id", Value: 1}}); err != nil {
				return nil, nil, err
			}
			if _, err := a.UpdateOne(sc, bson.D{{Key: "_id", Value: 0}}, bson.D{{Key: "$set", Value: bson.D{{Key: "n", Value: 1}}}}); err != nil {
				return nil, nil, err
			}
			sortID := options.Find().SetSort(bson.D{{Key: "_id", Value: 1}})
			cur, err := a.Find(sc, bson.D{}, sortID)
			if err != nil {
				return nil, nil, err
			}
			var raws []bson.Raw
			if err := cur.All(sc, &raws); err != nil {
				return nil, nil, err
			}
			o["inside"] = docs(t, raws)
			if err := sess.AbortTransaction(c); err != nil {
				return nil, nil, err
			}
			o["after"] = findAll(t, a, bson.D{}, sortID)
			return o, nil, nil
		})
	})
}

// --- compression requested by the client -----------------------------------------------------------

func TestCompression(t *testing.T) {
	differential(t, "compression", func(t *testing.T, target string) (any, map[string]any, error) {
		// The Go driver supports all three natively.
		client, ev := connect(t, withOptions(uris(t, target).plain, "compressors=snappy,zlib,zstd"))
		coll := freshDB(t, client, "compression", target).Collection("z")
		pad := fmt.Sprintf("%01000d", 0)
		ds := make([]any, 50)
		for i := range ds {
			ds[i] = bson.D{{Key: "_id", Value: i}, {Key: "pad", Value: pad}}
		}
		_, err := coll.InsertMany(ctx(t), ds)
		must(t, err, "insertMany")
		got := findAll(t, coll, bson.D{}, options.Find().SetBatchSize(10).SetSort(bson.D{{Key: "_id", Value: 1}}))
		padOK := true
		for _, d := range got {
			padOK = padOK && d.(map[string]any)["pad"] == pad
		}
		ev.mu.Lock()
		offered := map[string][]string{}
		for k, v := range ev.compress {
			offered[k] = v
		}
		ev.mu.Unlock()
		return map[string]any{"count": len(got), "padOk": padOK},
			map[string]any{"requested": "snappy,zlib,zstd", "serverOffered": offered}, nil
	})
}

// --- a driver configured the way it is on AWS Lambda ---------------------------------------------

func TestLambdaPolling(t *testing.T) {
	differential(t, "lambda-polling", func(t *testing.T, target string) (any, map[string]any, error) {
		t.Setenv("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")
		client, ev := connect(t, uris(t, target).plain, options.Client().SetHeartbeatInterval(500*time.Millisecond))
		coll := freshDB(t, client, "lambda-polling", target).Collection("l")
		_, err := coll.InsertOne(ctx(t), bson.D{{Key: "_id", Value: 1}})
		must(t, err, "insert")
		time.Sleep(1600 * time.Millisecond)
		found := findAll(t, coll, bson.D{})
		ev.mu.Lock()
		n, awaited := len(ev.heartbeats), 0
		for _, a := range ev.heartbeats {
			if a {
				awaited++
			}
		}
		ev.mu.Unlock()
		return map[string]any{"found": found, "heartbeats": n > 0, "awaited": awaited}, map[string]any{"heartbeats": n}, nil
	})
}

// --- directConnection=true, and a seed list of two gateways -------------------------------------------

func TestDirectConnection(t *testing.T) {
	differential(t, "direct-connection", func(t *testing.T, target string) (any, map[string]any, error) {
		client, ev := connect(t, withOptions(uris(t, target).plain, "directConnection=true"))
		coll := freshDB(t, client, "direct-connection", target).Collection("d")
		_, err := coll.InsertMany(ctx(t), []any{bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "_id", Value: 2}}})
		must(t, err, "insertMany")
		return map[string]any{"ids": ids(t, coll)}, map[string]any{"serverKinds": ev.serverKinds()}, nil
	})
}

func TestSeedListTwoGateways(t *testing.T) {
	res := differential(t, "seed-list-two-gateways", func(t *testing.T, target string) (any, map[string]any, error) {
		client, ev := connect(t, uris(t, target).seed)
		coll := freshDB(t, client, "seed-list-two-gateways", target).Collection("s")
		ds := make([]any, 10)
		for i := range ds {
			ds[i] = bson.D{{Key: "_id", Value: i}}
		}
		_, err := coll.InsertMany(ctx(t), ds)
		must(t, err, "insertMany")
		got := []any{}
		for _, d := range findAll(t, coll, bson.D{}, options.Find().SetBatchSize(3).SetSort(bson.D{{Key: "_id", Value: 1}})) {
			got = append(got, d.(map[string]any)["_id"])
		}
		n, err := coll.CountDocuments(ctx(t), bson.D{})
		must(t, err, "count")
		for i := 0; i < 40; i++ {
			unknown := false
			for _, k := range ev.serverKinds() {
				unknown = unknown || k == "Unknown"
			}
			if !unknown {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		return map[string]any{"ids": got, "count": n}, map[string]any{"serverKinds": ev.serverKinds()}, nil
	})
	// Beyond the comparison: through the seed list the driver must see both gateways as mongos.
	kinds := res["gateway"].Info["serverKinds"].(map[string]any)
	if len(kinds) != 2 {
		t.Errorf("gateway seed list: want 2 servers, got %v", kinds)
	}
	for addr, k := range kinds {
		if k != "Mongos" {
			t.Errorf("gateway seed list: %s is %v, want Mongos", addr, k)
		}
	}
}

// --- IAM ----------------------------------------------------------------------------------------

// awsIsolation points everything the driver might read besides the environment's credentials
// (shared config files, instance metadata) at nothing.
var awsIsolation = map[string]string{
	"AWS_REGION":                  "us-east-1",
	"AWS_EC2_METADATA_DISABLED":   "true",
	"AWS_CONFIG_FILE":             "/nonexistent/compat-aws-config",
	"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/compat-aws-credentials",
}

// TestIAM logs in with MONGODB-AWS the way a function on Lambda does: the role's temporary
// credentials in AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, read by the
// driver itself; then the same with a wrong secret.
func TestIAM(t *testing.T) {
	secret := env(t, "COMPAT_AWS_SECRET_ACCESS_KEY")
	t.Setenv("AWS_ACCESS_KEY_ID", env(t, "COMPAT_AWS_ACCESS_KEY_ID"))
	t.Setenv("AWS_SESSION_TOKEN", env(t, "COMPAT_AWS_SESSION_TOKEN"))
	for k, v := range awsIsolation {
		t.Setenv(k, v)
	}
	login := func(t *testing.T, target, secret string) map[string]any {
		t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
		client, _ := connect(t, uris(t, target).iam, options.Client().SetServerSelectionTimeout(5*time.Second))
		ping, err := pingOK(t, client)
		if err != nil {
			return map[string]any{"ping": map[string]any{"refused": errorShape(err)}}
		}
		coll := freshDB(t, client, "iam-mongodb-aws", target).Collection("c")
		_, err = coll.InsertOne(ctx(t), bson.D{{Key: "_id", Value: 1}, {Key: "who", Value: "iam"}})
		must(t, err, "insert")
		return map[string]any{"ping": ping, "found": findAll(t, coll, bson.D{})}
	}
	res := differential(t, "iam-mongodb-aws", func(t *testing.T, target string) (any, map[string]any, error) {
		o := login(t, target, secret)
		o["wrongSecret"] = login(t, target, "wrong-secret-wrong-secret-wrong-secret00")["ping"]
		return o, nil, nil
	})
	// The upstream has no MONGODB-AWS: the gateway side is checked on its own.
	g, _ := json.Marshal(res["gateway"].Outcome)
	want := `"found":[{"_id":1,"who":"iam"}],"ping":1,"wrongSecret":{"refused":{`
	if !strings.Contains(string(g), want) || !strings.Contains(string(g), `"code":18`) {
		t.Errorf("through the gateway the role must get in and a wrong secret get 18: %s", g)
	}
}
