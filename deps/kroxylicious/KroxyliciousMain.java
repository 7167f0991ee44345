/*
 * Entry point for Kroxylicious when it is assembled from Maven Central (issue 16 benchmark).
 *
 * Maven Central has Kroxylicious's runtime and filters but not the `kroxylicious-app` module whose
 * main class the distribution runs. This does what that main class does, minus the banner and the
 * picocli command line: parse the YAML config named by `-c FILE` / `--config FILE` with
 * Kroxylicious's own ConfigParser, start the proxy with the default feature set (plus features
 * unlocked with KROXYLICIOUS_UNLOCK_<FEATURE>=true, as the distribution allows), and block until
 * the process is stopped. Exits 1 with a message when the config is missing or invalid.
 */
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;

import io.kroxylicious.proxy.KafkaProxy;
import io.kroxylicious.proxy.config.ConfigParser;
import io.kroxylicious.proxy.config.Configuration;
import io.kroxylicious.proxy.internal.config.Feature;
import io.kroxylicious.proxy.internal.config.Features;

public final class KroxyliciousMain {
    private KroxyliciousMain() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2 || !(args[0].equals("-c") || args[0].equals("--config"))) {
            System.err.println("usage: KroxyliciousMain --config FILE.yaml");
            System.exit(1);
        }
        Path file = Path.of(args[1]);
        if (!Files.isRegularFile(file)) {
            System.err.println("Kroxylicious config file does not exist: " + file.toAbsolutePath());
            System.exit(1);
        }
        ConfigParser parser = new ConfigParser();
        Configuration config;
        try (InputStream in = Files.newInputStream(file)) {
            config = parser.parseConfiguration(in);
        }
        Features.FeaturesBuilder features = Features.builder();
        for (Feature f : Feature.values()) {
            String name = "KROXYLICIOUS_UNLOCK_" + f.name();
            if (Boolean.parseBoolean(System.getProperty(name, System.getenv(name)))) {
                features.enable(f);
            }
        }
        try (KafkaProxy proxy = new KafkaProxy(parser, config, features.build())) {
            proxy.startup();
            proxy.block();
        }
    }
}
