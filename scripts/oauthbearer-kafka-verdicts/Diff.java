import org.apache.kafka.common.security.oauthbearer.internals.OAuthBearerClientInitialResponse;
import java.nio.file.*;
import java.util.*;

public class Diff {
    public static void main(String[] args) throws Exception {
        // One hex-encoded message per line; prints ACCEPT<TAB>authzid<TAB>token or REJECT.
        for (String line : Files.readAllLines(Paths.get(args[0]))) {
            byte[] b = java.util.HexFormat.of().parseHex(line.trim());
            try {
                OAuthBearerClientInitialResponse r = new OAuthBearerClientInitialResponse(b);
                System.out.println("ACCEPT\t" + r.authorizationId() + "\t" + r.tokenValue());
            } catch (Exception e) {
                System.out.println("REJECT");
            }
        }
    }
}
