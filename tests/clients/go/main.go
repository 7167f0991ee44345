// franz-go (github.com/twmb/franz-go) as a test client for Kapsule's rig: producer (optionally
// idempotent or transactional), consumer (group member, or direct without a group) and KIP-932
// share-group consumer.
//
// Same contract as the Python, Node and Java clients in tests/clients: records are JSON with bytes
// in hex,
//
//	{"key": hex|null, "value": hex|null, "headers": [[name, hex|null], ...], "timestamp": ms|null,
//	 "partition": int|null}
//
// read from `--input FILE` holding {"records": [...]}; consumed records add "offset" and
// "timestamp_type". The program prints exactly one JSON object as its last stdout line; diagnostics
// go to stderr. Exit 1 (with {"error": ...}) on failure.
//
// Usage:
//
//	kapsule-franz produce --bootstrap B --topic T --input FILE [--compression none|gzip|snappy|lz4|zstd]
//	       [--acks all|leader|none] [--idempotent] [--transactional-id ID --transaction commit|abort]
//	       [security flags] [--timeout S]
//	  -> {"produced": n, "deliveries": [{"partition": p, "offset": o}, ...], "errors": []}
//	kapsule-franz consume --bootstrap B --topic T --count N [--group G] [--read-committed]
//	       [security flags] [--timeout S]
//	  -> {"records": [...], "timed_out": bool}
//	kapsule-franz share-consume --bootstrap B --topic T --count N --group G [security flags]
//	       [--timeout S]
//	  -> {"records": [...], "timed_out": bool}   (each record accepted; the group's
//	     share.auto.offset.reset is set to earliest first)
//
// Security flags: --sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512|OAUTHBEARER --sasl-user U
// --sasl-password P (OAUTHBEARER: --sasl-password is the token), --tls (TLS with the system roots),
// --tls-ca FILE, --tls-cert FILE --tls-key FILE (client certificate).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// hexBytes is a byte slice that is hex (or null) in JSON.
type hexBytes []byte

func (h hexBytes) MarshalJSON() ([]byte, error) {
	if h == nil {
		return []byte("null"), nil
	}
	return json.Marshal(hex.EncodeToString(h))
}

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*h = nil
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	if err != nil {
		return err
	}
	if d == nil {
		d = []byte{}
	}
	*h = d
	return nil
}

type header [2]json.RawMessage

type inRecord struct {
	Key       hexBytes `json:"key"`
	Value     hexBytes `json:"value"`
	Headers   []header `json:"headers"`
	Timestamp *int64   `json:"timestamp"`
	Partition *int32   `json:"partition"`
}

type outRecord struct {
	Partition     int32    `json:"partition"`
	Offset        int64    `json:"offset"`
	Key           hexBytes `json:"key"`
	Value         hexBytes `json:"value"`
	Headers       [][2]any `json:"headers"`
	Timestamp     int64    `json:"timestamp"`
	TimestampType string   `json:"timestamp_type"`
}

func emit(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	os.Stdout.Write(append(b, '\n'))
}

func die(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	emit(map[string]any{"error": msg})
	fmt.Fprintln(os.Stderr, "error:", msg)
	os.Exit(1)
}

type common struct {
	bootstrap, topic                  string
	saslMechanism, saslUser, saslPass string
	useTLS                            bool
	tlsCA, tlsCert, tlsKey            string
	timeout                           float64
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.bootstrap, "bootstrap", "", "bootstrap host:port (comma-separated)")
	fs.StringVar(&c.topic, "topic", "", "topic")
	fs.StringVar(&c.saslMechanism, "sasl-mechanism", "", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER")
	fs.StringVar(&c.saslUser, "sasl-user", "", "SASL user")
	fs.StringVar(&c.saslPass, "sasl-password", "", "SASL password (OAUTHBEARER: the token)")
	fs.BoolVar(&c.useTLS, "tls", false, "connect with TLS")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "PEM CA file to trust (implies --tls)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM client certificate (implies --tls)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM client key")
	fs.Float64Var(&c.timeout, "timeout", 60, "seconds")
}

func (c *common) opts() []kgo.Opt {
	if c.bootstrap == "" || c.topic == "" {
		die("--bootstrap and --topic are required")
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(strings.Split(c.bootstrap, ",")...),
		kgo.ClientID("kapsule-rig-franz"),
	}
	if c.saslMechanism != "" {
		var m sasl.Mechanism
		switch c.saslMechanism {
		case "PLAIN":
			m = plain.Auth{User: c.saslUser, Pass: c.saslPass}.AsMechanism()
		case "SCRAM-SHA-256":
			m = scram.Auth{User: c.saslUser, Pass: c.saslPass}.AsSha256Mechanism()
		case "SCRAM-SHA-512":
			m = scram.Auth{User: c.saslUser, Pass: c.saslPass}.AsSha512Mechanism()
		case "OAUTHBEARER":
			m = oauth.Auth{Token: c.saslPass}.AsMechanism()
		default:
			die("unknown --sasl-mechanism %q", c.saslMechanism)
		}
		opts = append(opts, kgo.SASL(m))
	}
	if c.useTLS || c.tlsCA != "" || c.tlsCert != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.tlsCA != "" {
			pem, err := os.ReadFile(c.tlsCA)
			if err != nil {
				die("reading --tls-ca: %v", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				die("--tls-ca %s holds no PEM certificate", c.tlsCA)
			}
		}
		if c.tlsCert != "" {
			cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
			if err != nil {
				die("loading --tls-cert/--tls-key: %v", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	return opts
}

func (c *common) deadline() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Duration(c.timeout*float64(time.Second)))
}

func produce(argv []string) {
	fs := flag.NewFlagSet("produce", flag.ExitOnError)
	var c common
	c.register(fs)
	input := fs.String("input", "", "JSON file {\"records\": [...]}")
	compression := fs.String("compression", "none", "none, gzip, snappy, lz4 or zstd")
	acks := fs.String("acks", "all", "all, leader or none")
	idempotent := fs.Bool("idempotent", false, "idempotent producer (needs --acks all)")
	txID := fs.String("transactional-id", "", "transactional id: produce in one transaction")
	txEnd := fs.String("transaction", "commit", "commit or abort (with --transactional-id)")
	fs.Parse(argv)

	raw, err := os.ReadFile(*input)
	if err != nil {
		die("reading --input: %v", err)
	}
	var doc struct {
		Records []inRecord `json:"records"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		die("parsing --input: %v", err)
	}

	opts := c.opts()
	codec := map[string]kgo.CompressionCodec{
		"none": kgo.NoCompression(), "gzip": kgo.GzipCompression(), "snappy": kgo.SnappyCompression(),
		"lz4": kgo.Lz4Compression(), "zstd": kgo.ZstdCompression(),
	}
	cc, ok := codec[*compression]
	if !ok {
		die("unknown --compression %q", *compression)
	}
	// No kgo.RecordDeliveryTimeout: franz-go measures it from each record's timestamp, and test
	// records carry explicit timestamps in the past. The --timeout context bounds the run instead.
	opts = append(opts, kgo.ProducerBatchCompression(cc), kgo.ProducerLinger(5*time.Millisecond))
	switch *acks {
	case "all":
		opts = append(opts, kgo.RequiredAcks(kgo.AllISRAcks()))
	case "leader":
		opts = append(opts, kgo.RequiredAcks(kgo.LeaderAck()))
	case "none":
		opts = append(opts, kgo.RequiredAcks(kgo.NoAck()))
	default:
		die("unknown --acks %q", *acks)
	}
	if *txID != "" {
		opts = append(opts, kgo.TransactionalID(*txID))
	} else if !*idempotent {
		opts = append(opts, kgo.DisableIdempotentWrite())
	}
	explicit := 0
	for _, r := range doc.Records {
		if r.Partition != nil {
			explicit++
		}
	}
	switch explicit {
	case 0:
	case len(doc.Records):
		opts = append(opts, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	default:
		die("either every record names its partition or none does")
	}

	records := make([]*kgo.Record, len(doc.Records))
	for i, r := range doc.Records {
		rec := &kgo.Record{Topic: c.topic, Key: []byte(r.Key), Value: []byte(r.Value)}
		if r.Key == nil {
			rec.Key = nil
		}
		if r.Value == nil {
			rec.Value = nil
		}
		for _, h := range r.Headers {
			var name string
			if err := json.Unmarshal(h[0], &name); err != nil {
				die("record %d: header name: %v", i, err)
			}
			var value hexBytes
			if err := json.Unmarshal(h[1], &value); err != nil {
				die("record %d: header value: %v", i, err)
			}
			rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: name, Value: []byte(value)})
		}
		if r.Timestamp != nil {
			rec.Timestamp = time.UnixMilli(*r.Timestamp)
		}
		if r.Partition != nil {
			rec.Partition = *r.Partition
		}
		records[i] = rec
	}

	client, err := kgo.NewClient(opts...)
	if err != nil {
		die("creating the client: %v", err)
	}
	defer client.Close()
	ctx, cancel := c.deadline()
	defer cancel()
	if *txID != "" {
		if err := client.BeginTransaction(); err != nil {
			die("beginning the transaction: %v", err)
		}
	}
	results := client.ProduceSync(ctx, records...)
	deliveries := make([]map[string]any, len(records))
	var failures []string
	for i, res := range results {
		if res.Err != nil {
			failures = append(failures, fmt.Sprintf("record %d: %v", i, res.Err))
			continue
		}
		deliveries[i] = map[string]any{"partition": res.Record.Partition, "offset": res.Record.Offset}
	}
	if len(failures) > 0 {
		die("%d of %d records not delivered: %s", len(failures), len(records), strings.Join(failures[:min(len(failures), 5)], "; "))
	}
	out := map[string]any{"produced": len(records), "deliveries": deliveries, "errors": []any{}}
	if *txID != "" {
		end := kgo.TryCommit
		switch *txEnd {
		case "commit":
		case "abort":
			end = kgo.TryAbort
		default:
			die("--transaction must be commit or abort")
		}
		if err := client.EndTransaction(ctx, end); err != nil {
			die("ending the transaction (%s): %v", *txEnd, err)
		}
		out["transaction"] = *txEnd
	}
	emit(out)
}

func consume(argv []string) {
	fs := flag.NewFlagSet("consume", flag.ExitOnError)
	var c common
	c.register(fs)
	count := fs.Int("count", 0, "records to read")
	group := fs.String("group", "", "consumer group (none: read every partition directly)")
	readCommitted := fs.Bool("read-committed", false, "isolation level read_committed")
	fetchMaxBytes := fs.Int("fetch-max-bytes", 0, "max bytes per fetch and per partition (0: franz-go's defaults)")
	fs.Parse(argv)

	opts := append(c.opts(),
		kgo.ConsumeTopics(c.topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if *fetchMaxBytes > 0 {
		opts = append(opts, kgo.FetchMaxBytes(int32(*fetchMaxBytes)), kgo.FetchMaxPartitionBytes(int32(*fetchMaxBytes)))
	}
	if *group != "" {
		opts = append(opts, kgo.ConsumerGroup(*group), kgo.DisableAutoCommit())
	}
	if *readCommitted {
		opts = append(opts, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	}
	client, err := kgo.NewClient(opts...)
	if err != nil {
		die("creating the client: %v", err)
	}
	defer client.Close()
	ctx, cancel := c.deadline()
	defer cancel()

	records := []outRecord{}
	for len(records) < *count {
		fetches := client.PollRecords(ctx, *count-len(records))
		if ctx.Err() != nil {
			break
		}
		if fatal := fatalFetchError(fetches); fatal != nil {
			die("consume error: %v", fatal)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			records = append(records, recordOut(r))
		})
	}
	timedOut := len(records) < *count
	if timedOut {
		fmt.Fprintf(os.Stderr, "timed out with %d of %d records\n", len(records), *count)
	}
	emit(map[string]any{"records": records, "timed_out": timedOut})
}

// shareConsume reads records as a KIP-932 share-group member (kgo.ShareGroup), accepting each
// record it reads. It first sets the group's share.auto.offset.reset to earliest
// (IncrementalAlterConfigs, GROUP resource) so records produced before it joined are delivered.
func shareConsume(argv []string) {
	fs := flag.NewFlagSet("share-consume", flag.ExitOnError)
	var c common
	c.register(fs)
	count := fs.Int("count", 0, "records to read")
	group := fs.String("group", "", "share group")
	fs.Parse(argv)
	if *group == "" {
		die("--group is required")
	}
	ctx, cancel := c.deadline()
	defer cancel()

	admin, err := kgo.NewClient(c.opts()...)
	if err != nil {
		die("creating the admin client: %v", err)
	}
	alter := kmsg.NewPtrIncrementalAlterConfigsRequest()
	resource := kmsg.NewIncrementalAlterConfigsRequestResource()
	resource.ResourceType = kmsg.ConfigResourceTypeGroupConfig
	resource.ResourceName = *group
	config := kmsg.NewIncrementalAlterConfigsRequestResourceConfig()
	config.Name = "share.auto.offset.reset"
	earliest := "earliest"
	config.Value = &earliest
	config.Op = kmsg.IncrementalAlterConfigOpSet
	resource.Configs = append(resource.Configs, config)
	alter.Resources = append(alter.Resources, resource)
	resp, err := alter.RequestWith(ctx, admin)
	admin.Close()
	if err != nil {
		die("setting share.auto.offset.reset: %v", err)
	}
	for _, r := range resp.Resources {
		if err := kerr.ErrorForCode(r.ErrorCode); err != nil {
			die("setting share.auto.offset.reset: %v", err)
		}
	}

	client, err := kgo.NewClient(append(c.opts(), kgo.ConsumeTopics(c.topic), kgo.ShareGroup(*group))...)
	if err != nil {
		die("creating the client: %v", err)
	}
	defer client.Close()
	records := []outRecord{}
	for len(records) < *count {
		fetches := client.PollRecords(ctx, *count-len(records))
		if ctx.Err() != nil {
			break
		}
		if fatal := fatalFetchError(fetches); fatal != nil {
			die("share consume error: %v", fatal)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			records = append(records, recordOut(r))
			r.Ack(kgo.AckAccept)
		})
	}
	timedOut := len(records) < *count
	if timedOut {
		fmt.Fprintf(os.Stderr, "timed out with %d of %d records\n", len(records), *count)
	}
	emit(map[string]any{"records": records, "timed_out": timedOut})
}

// fatalFetchError logs a poll's fetch errors to stderr and returns the last one that is not
// retriable (nil when every error is retriable or the poll's context ended).
func fatalFetchError(fetches kgo.Fetches) error {
	var fatal error
	fetches.EachError(func(t string, p int32, err error) {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return
		}
		fmt.Fprintf(os.Stderr, "fetch error on %s/%d: %v\n", t, p, err)
		if !isRetriable(err) {
			fatal = err
		}
	})
	return fatal
}

// recordOut is a consumed record in the clients' JSON form.
func recordOut(r *kgo.Record) outRecord {
	hs := make([][2]any, 0, len(r.Headers))
	for _, h := range r.Headers {
		var v any
		if h.Value != nil {
			v = hex.EncodeToString(h.Value)
		}
		hs = append(hs, [2]any{h.Key, v})
	}
	tsType := "create"
	if r.Attrs.TimestampType() == 1 {
		tsType = "log_append"
	}
	return outRecord{
		Partition: r.Partition, Offset: r.Offset,
		Key: hexOrNil(r.Key), Value: hexOrNil(r.Value), Headers: hs,
		Timestamp: r.Timestamp.UnixMilli(), TimestampType: tsType,
	}
}

// hexOrNil keeps the difference between a null (nil) and an empty (non-nil, zero length) field.
func hexOrNil(b []byte) hexBytes {
	if b == nil {
		return nil
	}
	return hexBytes(b)
}

func isRetriable(err error) bool {
	var r interface{ IsRetriable() bool }
	if errors.As(err, &r) {
		return r.IsRetriable()
	}
	return false
}

func main() {
	if len(os.Args) < 2 {
		die("usage: kapsule-franz produce|consume|share-consume --bootstrap B --topic T ...")
	}
	switch os.Args[1] {
	case "produce":
		produce(os.Args[2:])
	case "consume":
		consume(os.Args[2:])
	case "share-consume":
		shareConsume(os.Args[2:])
	default:
		die("unknown command %q", os.Args[1])
	}
}
