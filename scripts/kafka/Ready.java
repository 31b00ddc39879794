// Waits until a Kafka cluster answers: an Admin describeCluster() that lists at least N brokers
// (KRaft lists only registered, unfenced brokers) and names a controller.
//
//   java -cp 'LIBS/*' scripts/kafka/Ready.java BOOTSTRAP N TIMEOUT_S
//
// BOOTSTRAP is host:port[,host:port...] of PLAINTEXT listeners. On success prints one line,
// `ready: N brokers, cluster id X`, and exits 0; after TIMEOUT_S seconds prints why it is not
// ready to stderr and exits 1; exits 2 on bad arguments. Used by scripts/kafka.sh; LIBS is the jar
// folder it fetches (kafka-clients and slf4j-simple are in it).

import java.time.Duration;
import java.util.Collection;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.common.Node;

public class Ready {
    public static void main(String[] args) throws Exception {
        // Before any Kafka class logs: the client's INFO lines (config dump, reconnects) are noise
        // here. A -D on the command line wins.
        // "Connection to node -1 could not be established" WARNs are expected while a broker starts.
        if (System.getProperty("org.slf4j.simpleLogger.defaultLogLevel") == null) {
            System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        }
        String networkClient = "org.slf4j.simpleLogger.log.org.apache.kafka.clients.NetworkClient";
        if (System.getProperty(networkClient) == null) {
            System.setProperty(networkClient, "error");
        }
        if (args.length != 3) {
            System.err.println("usage: java -cp 'LIBS/*' Ready.java BOOTSTRAP N TIMEOUT_S");
            System.exit(2);
        }
        String bootstrap = args[0];
        int want;
        long timeoutS;
        try {
            want = Integer.parseInt(args[1]);
            timeoutS = Long.parseLong(args[2]);
        } catch (NumberFormatException e) {
            System.err.println("ready: N and TIMEOUT_S must be integers: " + e.getMessage());
            System.exit(2);
            return;
        }
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutS);

        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.CLIENT_ID_CONFIG, "conveyor-kafka-ready");
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "3000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, "100");
        props.put(AdminClientConfig.RETRY_BACKOFF_MAX_MS_CONFIG, "500");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, "100");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");

        String last = "no answer yet";
        Admin admin = Admin.create(props);
        try {
            while (true) {
                // Each attempt gets at most 3 s, and no more than is left until the deadline.
                long leftMs = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
                int attemptMs = (int) Math.max(200, Math.min(3000, leftMs));
                try {
                    DescribeClusterResult r =
                            admin.describeCluster(new DescribeClusterOptions().timeoutMs(attemptMs));
                    Collection<Node> nodes = r.nodes().get(attemptMs + 500, TimeUnit.MILLISECONDS);
                    Node controller = r.controller().get(attemptMs + 500, TimeUnit.MILLISECONDS);
                    String clusterId = r.clusterId().get(attemptMs + 500, TimeUnit.MILLISECONDS);
                    boolean haveController = controller != null && !controller.isEmpty();
                    if (nodes.size() >= want && haveController) {
                        System.out.println("ready: " + nodes.size() + " brokers, cluster id " + clusterId);
                        System.out.flush();
                        admin.close(Duration.ZERO);
                        System.exit(0);
                    }
                    last = nodes.size() + " of " + want + " brokers listed"
                            + (haveController ? "" : ", no controller known") + ": " + nodes;
                } catch (ExecutionException e) {
                    last = String.valueOf(e.getCause());
                } catch (TimeoutException e) {
                    last = "describeCluster timed out";
                }
                if (System.nanoTime() - deadline > 0) {
                    System.err.println("ready: " + bootstrap + " not ready after " + timeoutS + " s: " + last);
                    admin.close(Duration.ZERO);
                    System.exit(1);
                }
                Thread.sleep(200);
            }
        } finally {
            admin.close(Duration.ZERO);
        }
    }
}
