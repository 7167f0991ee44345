// The Apache Kafka Java client (kafka-clients 4.x) as a test client for Kapsule's rig: producer,
// consumer (classic or KIP-848 group, either isolation level), KIP-932 share consumer,
// transactional producer, AdminClient.
//
// Same contract as the Python and Node clients in tests/clients: records are JSON with bytes in hex,
//   {"key": hex|null, "value": hex|null, "headers": [[name, hex|null], ...], "timestamp": ms|null,
//    "partition": int|null}
// read from `--input FILE` holding {"records": [...]}; consumed records add "offset" and
// "timestamp_type". The program prints exactly one JSON object as its last stdout line; diagnostics
// and the client's own log go to stderr. Exit 1 (with {"error": ..., "error_type": ...}) on failure.
//
// Usage:
//   produce --bootstrap B --topic T --input FILE [--compression none|gzip|snappy|lz4|zstd]
//           [--acks all|1|0] [--idempotent true|false] [--linger-ms N]
//           [--transactional-id ID --transaction commit|abort] [--config k=v ...] [--timeout S]
//     -> {"produced": n, "deliveries": [{"partition": p, "offset": o}, ...], "transaction": ...}
//   consume --bootstrap B --topic T --count N [--group G] [--group-protocol classic|consumer]
//           [--isolation read_committed|read_uncommitted] [--assign] [--commit]
//           [--config k=v ...] [--timeout S]
//     -> {"records": [...], "timed_out": bool}   (stops after N records or the timeout)
//   share-consume --bootstrap B --topic T --count N --group G [--config k=v ...] [--timeout S]
//     a KIP-932 share consumer (KafkaShareConsumer, records acknowledged as accepted on each poll;
//     each offset listed once, repeats counted in "redelivered");
//     first sets the share group's share.auto.offset.reset to earliest (AdminClient, same
//     bootstrap) so records produced before it joined are delivered
//     -> {"records": [...], "timed_out": bool}
//   admin --bootstrap B --op OP [--topic T] [--partitions N] [--replication-factor R]
//         [--topic-config k=v ...] [--config k=v ...] [--timeout S]
//     OP: create-topic, describe-topic, delete-topic, list-topics, list-groups, describe-cluster,
//         describe-configs, describe-group (with --group G)
//
// `--config k=v` passes any client property (security.protocol, sasl.*, ssl.*, ...).

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.File;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.ConsumerGroupDescription;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.GroupListing;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.KafkaShareConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.record.TimestampType;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class KapsuleClient {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final HexFormat HEX = HexFormat.of();

    /** Parsed `--name value` arguments; `--config` and `--topic-config` may repeat. */
    private static final class Args {
        final Map<String, String> single = new HashMap<>();
        final Map<String, List<String>> repeated = new HashMap<>();

        Args(String[] argv, int from) {
            for (int i = from; i < argv.length; i++) {
                String a = argv[i];
                if (!a.startsWith("--")) throw new IllegalArgumentException("unexpected argument " + a);
                String name = a.substring(2);
                String value = (i + 1 < argv.length && !argv[i + 1].startsWith("--")) ? argv[++i] : "true";
                if (name.equals("config") || name.equals("topic-config")) {
                    repeated.computeIfAbsent(name, k -> new ArrayList<>()).add(value);
                } else {
                    single.put(name, value);
                }
            }
        }

        String required(String name) {
            String v = single.get(name);
            if (v == null) throw new IllegalArgumentException("--" + name + " is required");
            return v;
        }

        String get(String name, String dflt) {
            return single.getOrDefault(name, dflt);
        }

        Map<String, String> pairs(String name) {
            Map<String, String> out = new LinkedHashMap<>();
            for (String p : repeated.getOrDefault(name, List.of())) {
                int eq = p.indexOf('=');
                if (eq < 0) throw new IllegalArgumentException("--" + name + " expects key=value, got " + p);
                out.put(p.substring(0, eq), p.substring(eq + 1));
            }
            return out;
        }

        Duration timeout() {
            return Duration.ofMillis((long) (Double.parseDouble(get("timeout", "60")) * 1000));
        }
    }

    public static void main(String[] argv) {
        if (argv.length == 0) fail("usage: KapsuleClient produce|consume|admin --bootstrap B ...", null);
        try {
            Args args = new Args(argv, 1);
            ObjectNode out = switch (argv[0]) {
                case "produce" -> produce(args);
                case "consume" -> consume(args);
                case "share-consume" -> shareConsume(args);
                case "admin" -> admin(args);
                default -> throw new IllegalArgumentException("unknown command " + argv[0]);
            };
            emit(out);
            System.exit(0);
        } catch (Throwable t) {
            t.printStackTrace(System.err);
            fail(String.valueOf(t.getMessage()), t);
        }
    }

    private static Properties baseProps(Args args) {
        Properties p = new Properties();
        p.put("bootstrap.servers", args.required("bootstrap"));
        p.put("client.id", "kapsule-rig-java");
        return p;
    }

    // ---------------------------------------------------------------------------------------------
    private static ObjectNode produce(Args args) throws Exception {
        String topic = args.required("topic");
        JsonNode doc = JSON.readTree(new File(args.required("input")));
        Properties p = baseProps(args);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, args.get("compression", "none"));
        p.put(ProducerConfig.ACKS_CONFIG, args.get("acks", "all"));
        String txId = args.single.get("transactional-id");
        // A transactional producer is idempotent; others are not unless asked (the broker default
        // client is, but tests choose explicitly).
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, args.get("idempotent", txId != null ? "true" : "false"));
        p.put(ProducerConfig.LINGER_MS_CONFIG, args.get("linger-ms", "5"));
        long timeoutMs = args.timeout().toMillis();
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, Long.toString(Math.max(timeoutMs, 10_000)));
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, Long.toString(Math.min(timeoutMs, 30_000)));
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, Long.toString(timeoutMs));
        String txEnd = args.get("transaction", "commit");
        if (txId != null) p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txId);
        p.putAll(args.pairs("config"));

        List<ProducerRecord<byte[], byte[]>> records = new ArrayList<>();
        for (JsonNode r : doc.get("records")) {
            List<Header> headers = new ArrayList<>();
            JsonNode hs = r.get("headers");
            if (hs != null && !hs.isNull()) {
                for (JsonNode h : hs) headers.add(new RecordHeader(h.get(0).asText(), unhex(h.get(1))));
            }
            Integer partition = r.hasNonNull("partition") ? r.get("partition").asInt() : null;
            Long ts = r.hasNonNull("timestamp") ? r.get("timestamp").asLong() : null;
            records.add(new ProducerRecord<>(topic, partition, ts, unhex(r.get("key")), unhex(r.get("value")), headers));
        }

        ObjectNode out = JSON.createObjectNode();
        ArrayNode deliveries = out.putArray("deliveries");
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            if (txId != null) {
                producer.initTransactions();
                producer.beginTransaction();
            }
            List<Future<RecordMetadata>> futures = new ArrayList<>();
            for (ProducerRecord<byte[], byte[]> r : records) futures.add(producer.send(r));
            producer.flush();
            for (Future<RecordMetadata> f : futures) {
                RecordMetadata md = f.get(timeoutMs, TimeUnit.MILLISECONDS);
                ObjectNode d = deliveries.addObject();
                d.put("partition", md.partition());
                d.put("offset", md.offset());
            }
            if (txId != null) {
                switch (txEnd) {
                    case "commit" -> producer.commitTransaction();
                    case "abort" -> producer.abortTransaction();
                    default -> throw new IllegalArgumentException("--transaction must be commit or abort, got " + txEnd);
                }
                out.put("transaction", txEnd);
            }
        }
        out.put("produced", records.size());
        out.putArray("errors");
        return out;
    }

    // ---------------------------------------------------------------------------------------------
    private static ObjectNode consume(Args args) {
        String topic = args.required("topic");
        int count = Integer.parseInt(args.required("count"));
        boolean assign = args.single.containsKey("assign");
        Properties p = baseProps(args);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, args.get("isolation", "read_uncommitted"));
        if (!assign) {
            p.put(ConsumerConfig.GROUP_ID_CONFIG, args.required("group"));
            p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, args.get("group-protocol", "classic"));
        }
        p.putAll(args.pairs("config"));
        boolean commit = args.single.containsKey("commit");
        long deadline = System.nanoTime() + args.timeout().toNanos();

        ObjectNode out = JSON.createObjectNode();
        ArrayNode records = out.putArray("records");
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(p)) {
            if (assign) {
                List<PartitionInfo> parts = consumer.partitionsFor(topic, args.timeout());
                if (parts == null || parts.isEmpty()) throw new IllegalStateException("topic " + topic + " not found");
                List<TopicPartition> tps = new ArrayList<>();
                for (PartitionInfo pi : parts) tps.add(new TopicPartition(topic, pi.partition()));
                consumer.assign(tps);
                consumer.seekToBeginning(tps);
            } else {
                consumer.subscribe(List.of(topic));
            }
            while (records.size() < count && System.nanoTime() < deadline) {
                ConsumerRecords<byte[], byte[]> batch = consumer.poll(Duration.ofMillis(500));
                for (ConsumerRecord<byte[], byte[]> r : batch) records.add(recordJson(r));
                if (commit && !batch.isEmpty()) consumer.commitSync();
            }
        }
        boolean timedOut = records.size() < count;
        if (timedOut) System.err.printf("timed out with %d of %d records%n", records.size(), count);
        out.put("timed_out", timedOut);
        return out;
    }

    // ---------------------------------------------------------------------------------------------
    private static ObjectNode shareConsume(Args args) throws Exception {
        String topic = args.required("topic");
        int count = Integer.parseInt(args.required("count"));
        Properties p = baseProps(args);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.GROUP_ID_CONFIG, args.required("group"));
        p.putAll(args.pairs("config"));
        long deadline = System.nanoTime() + args.timeout().toNanos();
        Properties adminProps = baseProps(args);
        adminProps.putAll(args.pairs("config"));
        try (Admin admin = Admin.create(adminProps)) {
            ConfigResource group = new ConfigResource(ConfigResource.Type.GROUP, args.required("group"));
            AlterConfigOp earliest = new AlterConfigOp(
                new ConfigEntry("share.auto.offset.reset", "earliest"), AlterConfigOp.OpType.SET);
            admin.incrementalAlterConfigs(Map.of(group, List.of(earliest))).all()
                .get(args.timeout().toMillis(), TimeUnit.MILLISECONDS);
        }

        ObjectNode out = JSON.createObjectNode();
        ArrayNode records = out.putArray("records");
        // Share groups deliver at least once: a record whose acknowledgement was lost (a leader
        // change) comes again. Each offset is listed once; `redelivered` counts the repeats.
        java.util.Set<String> seen = new java.util.HashSet<>();
        int redelivered = 0;
        try (KafkaShareConsumer<byte[], byte[]> consumer = new KafkaShareConsumer<>(p)) {
            consumer.subscribe(List.of(topic));
            while (records.size() < count && System.nanoTime() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                    if (seen.add(r.partition() + ":" + r.offset())) records.add(recordJson(r));
                    else redelivered++;
                }
                consumer.commitSync();
            }
        }
        boolean timedOut = records.size() < count;
        if (timedOut) System.err.printf("timed out with %d of %d records%n", records.size(), count);
        out.put("timed_out", timedOut);
        out.put("redelivered", redelivered);
        return out;
    }

    private static ObjectNode recordJson(ConsumerRecord<byte[], byte[]> r) {
        ObjectNode o = JSON.createObjectNode();
        o.put("partition", r.partition());
        o.put("offset", r.offset());
        o.put("key", hex(r.key()));
        o.put("value", hex(r.value()));
        ArrayNode hs = o.putArray("headers");
        for (Header h : r.headers()) {
            ArrayNode pair = hs.addArray();
            pair.add(h.key());
            pair.add(hex(h.value()));
        }
        if (r.timestampType() == TimestampType.NO_TIMESTAMP_TYPE) o.putNull("timestamp");
        else o.put("timestamp", r.timestamp());
        o.put("timestamp_type", switch (r.timestampType()) {
            case CREATE_TIME -> "create";
            case LOG_APPEND_TIME -> "log_append";
            default -> "none";
        });
        return o;
    }

    // ---------------------------------------------------------------------------------------------
    private static ObjectNode admin(Args args) throws Exception {
        Properties p = baseProps(args);
        long timeoutMs = args.timeout().toMillis();
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, Long.toString(timeoutMs));
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, Long.toString(Math.min(timeoutMs, 30_000)));
        p.putAll(args.pairs("config"));
        String op = args.required("op");
        ObjectNode out = JSON.createObjectNode();
        out.put("op", op);
        try (Admin admin = Admin.create(p)) {
            switch (op) {
                case "create-topic" -> {
                    String topic = args.required("topic");
                    int partitions = Integer.parseInt(args.get("partitions", "1"));
                    short rf = Short.parseShort(args.get("replication-factor", "-1"));
                    NewTopic nt = new NewTopic(topic, java.util.Optional.of(partitions),
                            rf < 0 ? java.util.Optional.empty() : java.util.Optional.of(rf));
                    nt.configs(args.pairs("topic-config"));
                    admin.createTopics(List.of(nt)).all().get(timeoutMs, TimeUnit.MILLISECONDS);
                    out.put("created", topic);
                }
                case "delete-topic" -> {
                    String topic = args.required("topic");
                    admin.deleteTopics(List.of(topic)).all().get(timeoutMs, TimeUnit.MILLISECONDS);
                    out.put("deleted", topic);
                }
                case "describe-topic" -> {
                    String topic = args.required("topic");
                    TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames()
                            .get(timeoutMs, TimeUnit.MILLISECONDS).get(topic);
                    out.put("name", d.name());
                    out.put("topic_id", d.topicId().toString());
                    out.put("internal", d.isInternal());
                    ArrayNode parts = out.putArray("partitions");
                    for (TopicPartitionInfo tp : d.partitions()) {
                        ObjectNode o = parts.addObject();
                        o.put("partition", tp.partition());
                        o.set("leader", nodeJson(tp.leader()));
                        ArrayNode replicas = o.putArray("replicas");
                        for (Node n : tp.replicas()) replicas.add(n.id());
                        ArrayNode isr = o.putArray("isr");
                        for (Node n : tp.isr()) isr.add(n.id());
                    }
                }
                case "list-topics" -> {
                    ArrayNode names = out.putArray("topics");
                    List<String> sorted = new ArrayList<>(admin.listTopics().names().get(timeoutMs, TimeUnit.MILLISECONDS));
                    Collections.sort(sorted);
                    sorted.forEach(names::add);
                }
                case "list-groups" -> {
                    ArrayNode groups = out.putArray("groups");
                    Collection<GroupListing> listings = admin.listGroups().all().get(timeoutMs, TimeUnit.MILLISECONDS);
                    for (GroupListing g : listings) {
                        ObjectNode o = groups.addObject();
                        o.put("group_id", g.groupId());
                        o.put("type", g.type().map(Object::toString).orElse(null));
                        o.put("protocol", g.protocol());
                    }
                }
                case "describe-group" -> {
                    String group = args.required("group");
                    ConsumerGroupDescription d = admin.describeConsumerGroups(List.of(group)).all()
                            .get(timeoutMs, TimeUnit.MILLISECONDS).get(group);
                    out.put("group_id", d.groupId());
                    out.put("state", d.groupState().toString());
                    out.put("type", d.type().toString());
                    out.put("members", d.members().size());
                    out.set("coordinator", nodeJson(d.coordinator()));
                }
                case "describe-cluster" -> {
                    DescribeClusterResult r = admin.describeCluster();
                    out.put("cluster_id", r.clusterId().get(timeoutMs, TimeUnit.MILLISECONDS));
                    out.set("controller", nodeJson(r.controller().get(timeoutMs, TimeUnit.MILLISECONDS)));
                    ArrayNode nodes = out.putArray("nodes");
                    for (Node n : r.nodes().get(timeoutMs, TimeUnit.MILLISECONDS)) nodes.add(nodeJson(n));
                }
                case "describe-configs" -> {
                    String topic = args.required("topic");
                    ConfigResource res = new ConfigResource(ConfigResource.Type.TOPIC, topic);
                    Config c = admin.describeConfigs(List.of(res)).all().get(timeoutMs, TimeUnit.MILLISECONDS).get(res);
                    ObjectNode configs = out.putObject("configs");
                    for (ConfigEntry e : c.entries()) configs.put(e.name(), e.value());
                }
                default -> throw new IllegalArgumentException("unknown admin op " + op);
            }
        }
        return out;
    }

    private static JsonNode nodeJson(Node n) {
        if (n == null) return JSON.nullNode();
        ObjectNode o = JSON.createObjectNode();
        o.put("id", n.id());
        o.put("host", n.host());
        o.put("port", n.port());
        return o;
    }

    // ---------------------------------------------------------------------------------------------
    private static byte[] unhex(JsonNode v) {
        if (v == null || v.isNull()) return null;
        return HEX.parseHex(v.asText());
    }

    private static String hex(byte[] b) {
        return b == null ? null : HEX.formatHex(b);
    }

    private static void emit(ObjectNode o) {
        try {
            System.out.println(JSON.writeValueAsString(o));
            System.out.flush();
        } catch (Exception e) {
            throw new RuntimeException(e);
        }
    }

    private static void fail(String msg, Throwable t) {
        ObjectNode o = JSON.createObjectNode();
        o.put("error", msg);
        if (t != null) {
            Throwable root = t;
            while (root.getCause() != null && root.getCause() != root) root = root.getCause();
            o.put("error_type", t.getClass().getName());
            o.put("root_cause", root.getClass().getName() + ": " + root.getMessage());
        }
        emit(o);
        System.err.println("error: " + msg);
        System.exit(1);
    }
}
