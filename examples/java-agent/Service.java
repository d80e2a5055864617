// An agent service in plain Java, with no tracing code at all. Run it under the OpenTelemetry
// Java agent, which traces its HTTP handler and copies the rollout ids its caller put in W3C
// Baggage onto every span:
//
//   OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_SERVICE_NAME=java-agent \
//   OTEL_JAVA_EXPERIMENTAL_SPAN_ATTRIBUTES_COPY_FROM_BAGGAGE_INCLUDE='agentlightning.*' \
//   javac Service.java && PORT=8789 java -javaagent:opentelemetry-javaagent.jar Service
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Service {
  private static final Pattern NUMBER = Pattern.compile("\\d+");

  public static void main(String[] args) throws IOException {
    int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8789"));
    HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 0);
    server.createContext("/solve", Service::solve);
    server.start();
    System.out.println("agent listening on http://127.0.0.1:" + server.getAddress().getPort() + "/solve");
  }

  private static void solve(HttpExchange exchange) throws IOException {
    String question = new String(exchange.getRequestBody().readAllBytes(), StandardCharsets.UTF_8);
    Matcher numbers = NUMBER.matcher(question);
    long sum = 0;
    int found = 0;
    while (found < 2 && numbers.find()) {
      sum += Long.parseLong(numbers.group());
      found++;
    }
    boolean solved = found == 2 && !question.contains("impossible");
    byte[] body = (solved ? "{\"answer\":" + sum + "}" : "{\"error\":\"cannot solve\"}")
        .getBytes(StandardCharsets.UTF_8);
    exchange.getResponseHeaders().set("Content-Type", "application/json");
    exchange.sendResponseHeaders(solved ? 200 : 500, body.length);
    exchange.getResponseBody().write(body);
    exchange.close();
  }
}
