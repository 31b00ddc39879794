// Kafka's own Java client (kafka-clients, from the same Maven artifacts as the test broker) on
// conveyor's topics, for `tests/java_interop_live.rs`. Run as a single-file program:
//
//   java -cp "$CONVEYOR_TEST_KAFKA_LIBS/*" Interop.java consume BROKERS TOPIC COUNT TIMEOUT_S
//       reads COUNT records from every partition of TOPIC from the beginning (no group) and prints
//       one JSON line per record: partition, offset, key, value and headers (UTF-8 text).
//   java -cp "$CONVEYOR_TEST_KAFKA_LIBS/*" Interop.java produce BROKERS TOPIC COUNT KEYS
//       writes COUNT records with the client's default partitioner, keys "key-0".."key-(KEYS-1)"
//       in turn, values {"key": K, "seq": N} (N counts per key), acks=all, and prints one line
//       per record: `KEY PARTITION OFFSET SEQ`.

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class Interop {
    public static void main(String[] args) throws Exception {
        if (args.length != 5) {
            System.err.println("usage: Interop consume BROKERS TOPIC COUNT TIMEOUT_S | produce BROKERS TOPIC COUNT KEYS");
            System.exit(2);
        }
        String brokers = args[1], topic = args[2];
        int count = Integer.parseInt(args[3]);
        switch (args[0]) {
            case "consume" -> consume(brokers, topic, count, Integer.parseInt(args[4]));
            case "produce" -> produce(brokers, topic, count, Integer.parseInt(args[4]));
            default -> {
                System.err.println("unknown command " + args[0]);
                System.exit(2);
            }
        }
    }

    static void consume(String brokers, String topic, int count, int timeoutS) {
        Properties p = new Properties();
        p.put("bootstrap.servers", brokers);
        p.put("key.deserializer", ByteArrayDeserializer.class.getName());
        p.put("value.deserializer", ByteArrayDeserializer.class.getName());
        p.put("enable.auto.commit", "false");
        p.put("isolation.level", "read_committed");
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p)) {
            List<TopicPartition> tps = new ArrayList<>();
            for (PartitionInfo pi : c.partitionsFor(topic, Duration.ofSeconds(timeoutS))) {
                tps.add(new TopicPartition(topic, pi.partition()));
            }
            c.assign(tps);
            c.seekToBeginning(tps);
            long deadline = System.currentTimeMillis() + timeoutS * 1000L;
            int seen = 0;
            while (seen < count && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(200))) {
                    StringBuilder h = new StringBuilder("{");
                    for (Header header : r.headers()) {
                        if (h.length() > 1) h.append(',');
                        h.append(json(header.key())).append(':').append(json(text(header.value())));
                    }
                    h.append('}');
                    System.out.println("{\"partition\":" + r.partition() + ",\"offset\":" + r.offset()
                            + ",\"key\":" + (r.key() == null ? "null" : json(text(r.key())))
                            + ",\"value\":" + json(text(r.value())) + ",\"headers\":" + h + "}");
                    seen++;
                }
            }
            System.out.flush();
            if (seen < count) {
                System.err.println("read " + seen + " of " + count + " records in " + timeoutS + " s");
                System.exit(1);
            }
        }
    }

    static void produce(String brokers, String topic, int count, int keys) throws Exception {
        Properties p = new Properties();
        p.put("bootstrap.servers", brokers);
        p.put("key.serializer", ByteArraySerializer.class.getName());
        p.put("value.serializer", ByteArraySerializer.class.getName());
        p.put("acks", "all");
        p.put("enable.idempotence", "true");
        p.put("max.block.ms", "15000");
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            Map<String, Integer> seq = new HashMap<>();
            List<Object[]> sent = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                String key = "key-" + (i % keys);
                int n = seq.merge(key, 1, Integer::sum) - 1;
                String value = "{\"key\":\"" + key + "\",\"seq\":" + n + "}";
                sent.add(new Object[] {key, n, producer.send(new ProducerRecord<>(topic,
                        key.getBytes(StandardCharsets.UTF_8), value.getBytes(StandardCharsets.UTF_8)))});
            }
            for (Object[] s : sent) {
                @SuppressWarnings("unchecked")
                RecordMetadata m = ((java.util.concurrent.Future<RecordMetadata>) s[2]).get();
                System.out.println(s[0] + " " + m.partition() + " " + m.offset() + " " + s[1]);
            }
        }
    }

    static String text(byte[] b) {
        return b == null ? "" : new String(b, StandardCharsets.UTF_8);
    }

    static String json(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (ch < 0x20) out.append(String.format("\\u%04x", (int) ch));
                    else out.append(ch);
                }
            }
        }
        return out.append('"').toString();
    }
}
