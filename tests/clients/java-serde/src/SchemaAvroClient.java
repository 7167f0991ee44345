// Apicurio Registry's Avro serde (AvroKafkaSerializer / AvroKafkaDeserializer, from Maven Central)
// with the Apache Kafka Java client, as a test client for Kapsule's schema-field encryption.
//
// The records are orders of a fixed Avro schema (ORDER below, `ssn` and `customer.email` tagged
// PII with `confluent:tags`): order i has id i, ssn "SSNMARK-i", customer {name "Name i", email
// "EMAILMARK-i@example.com"}, note "note i". The serializer registers the schema (artifact
// <topic>-value, Apicurio's v3 API) and writes the Confluent wire format (magic 0, 4-byte content
// id), which Kapsule reads through the registry's Confluent-compatible API.
//
// Usage:
//   produce --bootstrap B --registry V3URL --topic T --count N [--config k=v ...] [--timeout S]
//     -> {"serialized": [hex, ...], "deliveries": [{"partition": p, "offset": o} | {"error": e}]}
//   consume --bootstrap B --registry V3URL --topic T --count N [--config k=v ...] [--timeout S]
//     -> {"records": [{"value": hex, "headers": [[k, hex]], "object": {...} | null,
//                      "deserialize_error": str | null}], "timed_out": bool}
// `object` is the deserialized GenericRecord as JSON (Avro's own JSON rendering of it). The last
// stdout line is the JSON result; diagnostics go to stderr. Exit 1 with {"error": ...} on failure.

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;

import io.apicurio.registry.serde.avro.AvroKafkaDeserializer;
import io.apicurio.registry.serde.avro.AvroKafkaSerializer;

import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class SchemaAvroClient {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final HexFormat HEX = HexFormat.of();

    static final String ORDER = """
        {"type": "record", "name": "Order", "namespace": "shop", "fields": [
          {"name": "id", "type": "long"},
          {"name": "ssn", "type": "string", "confluent:tags": ["PII"]},
          {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
            {"name": "name", "type": "string"},
            {"name": "email", "type": "string", "confluent:tags": ["PII"]}]}},
          {"name": "note", "type": "string"}]}""";

    public static void main(String[] argv) {
        try {
            if (argv.length == 0) throw new IllegalArgumentException("usage: produce|consume --bootstrap B ...");
            Map<String, String> args = new HashMap<>();
            Properties client = new Properties();
            for (int i = 1; i < argv.length; i += 2) {
                if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
                    throw new IllegalArgumentException("expected --name value at " + argv[i]);
                }
                String name = argv[i].substring(2), value = argv[i + 1];
                if (name.equals("config")) {
                    int eq = value.indexOf('=');
                    if (eq < 0) throw new IllegalArgumentException("--config expects k=v, got " + value);
                    client.put(value.substring(0, eq), value.substring(eq + 1));
                } else {
                    args.put(name, value);
                }
            }
            for (String r : List.of("bootstrap", "registry", "topic", "count")) {
                if (!args.containsKey(r)) throw new IllegalArgumentException("--" + r + " is required");
            }
            client.put("bootstrap.servers", args.get("bootstrap"));
            Duration timeout = Duration.ofMillis((long) (Double.parseDouble(args.getOrDefault("timeout", "30")) * 1000));
            Map<String, Object> serde = new HashMap<>();
            serde.put("apicurio.registry.url", args.get("registry"));
            serde.put("apicurio.registry.auto-register", true);
            serde.put("apicurio.registry.use-id", "contentId");
            serde.put("apicurio.registry.headers.enabled", false);
            ObjectNode out = switch (argv[0]) {
                case "produce" -> produce(args.get("topic"), Integer.parseInt(args.get("count")), client, serde, timeout);
                case "consume" -> consume(args.get("topic"), Integer.parseInt(args.get("count")), client, serde, timeout);
                default -> throw new IllegalArgumentException("unknown mode " + argv[0]);
            };
            System.out.println(JSON.writeValueAsString(out));
        } catch (Exception e) {
            e.printStackTrace(System.err);
            ObjectNode err = JSON.createObjectNode();
            err.put("error", String.valueOf(e));
            System.out.println(err);
            System.exit(1);
        }
    }

    static GenericRecord order(Schema schema, int i) {
        GenericRecord customer = new GenericData.Record(schema.getField("customer").schema());
        customer.put("name", "Name " + i);
        customer.put("email", "EMAILMARK-" + i + "@example.com");
        GenericRecord o = new GenericData.Record(schema);
        o.put("id", (long) i);
        o.put("ssn", "SSNMARK-" + i);
        o.put("customer", customer);
        o.put("note", "note " + i);
        return o;
    }

    static ObjectNode produce(String topic, int count, Properties client, Map<String, Object> serde,
                              Duration timeout) throws Exception {
        Schema schema = new Schema.Parser().parse(ORDER);
        ObjectNode out = JSON.createObjectNode();
        ArrayNode serialized = out.putArray("serialized");
        ArrayNode deliveries = out.putArray("deliveries");
        client.put(ProducerConfig.ACKS_CONFIG, "all");
        client.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, (int) timeout.toMillis());
        client.put(ProducerConfig.LINGER_MS_CONFIG, 5);
        client.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, timeout.toMillis());
        client.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, (int) Math.min(timeout.toMillis() - 5, 15000));
        try (AvroKafkaSerializer<GenericRecord> ser = new AvroKafkaSerializer<>();
             KafkaProducer<byte[], byte[]> producer =
                 new KafkaProducer<>(client, new ByteArraySerializer(), new ByteArraySerializer())) {
            ser.configure(serde, false);
            List<Future<RecordMetadata>> sent = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                byte[] value = ser.serialize(topic, order(schema, i));
                serialized.add(HEX.formatHex(value));
                sent.add(producer.send(new ProducerRecord<>(topic, value)));
            }
            producer.flush();
            for (Future<RecordMetadata> f : sent) {
                ObjectNode d = deliveries.addObject();
                try {
                    RecordMetadata m = f.get(timeout.toMillis(), TimeUnit.MILLISECONDS);
                    d.put("partition", m.partition());
                    d.put("offset", m.offset());
                } catch (java.util.concurrent.ExecutionException e) {
                    d.put("error", String.valueOf(e.getCause()));
                }
            }
        }
        return out;
    }

    static ObjectNode consume(String topic, int count, Properties client, Map<String, Object> serde,
                              Duration timeout) throws Exception {
        ObjectNode out = JSON.createObjectNode();
        ArrayNode records = out.putArray("records");
        client.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        client.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        long deadline = System.nanoTime() + timeout.toNanos();
        try (AvroKafkaDeserializer<GenericRecord> de = new AvroKafkaDeserializer<>();
             KafkaConsumer<byte[], byte[]> consumer =
                 new KafkaConsumer<>(client, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            de.configure(serde, false);
            List<TopicPartition> parts = new ArrayList<>();
            consumer.partitionsFor(topic, timeout).forEach(p -> parts.add(new TopicPartition(topic, p.partition())));
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            while (records.size() < count && System.nanoTime() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                    ObjectNode rec = records.addObject();
                    rec.put("value", r.value() == null ? null : HEX.formatHex(r.value()));
                    ArrayNode headers = rec.putArray("headers");
                    for (Header h : r.headers()) {
                        ArrayNode pair = headers.addArray();
                        pair.add(h.key());
                        pair.add(h.value() == null ? null : HEX.formatHex(h.value()));
                    }
                    try {
                        GenericRecord o = de.deserialize(topic, r.headers(), r.value());
                        rec.set("object", JSON.readTree(GenericData.get().toString(o)));
                        rec.putNull("deserialize_error");
                    } catch (Exception e) {
                        rec.putNull("object");
                        rec.put("deserialize_error", String.valueOf(e));
                    }
                }
            }
        }
        out.put("timed_out", records.size() < count);
        System.err.println("[java-serde] consumed " + records.size() + " records");
        return out;
    }
}
