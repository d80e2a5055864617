// A Java agent reporting to lightning-otlp with the OpenTelemetry SDK and its OTLP exporter.
//
//   mvn -q compile
//   OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_SERVICE_NAME=java-sdk-agent \
//   OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
//   OTEL_RESOURCE_ATTRIBUTES=agentlightning.rollout_id=ro-0123456789ab,agentlightning.attempt_id=at-01234567 \
//   java -cp "target/classes:$(cat target/classpath.txt)" Quickstart
import io.opentelemetry.api.common.AttributeKey;
import io.opentelemetry.api.common.Attributes;
import io.opentelemetry.api.trace.Span;
import io.opentelemetry.api.trace.SpanKind;
import io.opentelemetry.api.trace.StatusCode;
import io.opentelemetry.api.trace.Tracer;
import io.opentelemetry.context.Scope;
import io.opentelemetry.sdk.OpenTelemetrySdk;
import io.opentelemetry.sdk.autoconfigure.AutoConfiguredOpenTelemetrySdk;
import java.util.List;

public class Quickstart {
  public static void main(String[] args) {
    // Endpoint, protocol (OTEL_EXPORTER_OTLP_PROTOCOL=grpc or http/protobuf) and the rollout ids
    // (OTEL_RESOURCE_ATTRIBUTES) all come from the standard environment variables.
    OpenTelemetrySdk sdk = AutoConfiguredOpenTelemetrySdk.initialize().getOpenTelemetrySdk();
    Tracer tracer = sdk.getTracer("java-sdk-agent");

    Span run = tracer.spanBuilder("agent run").startSpan();
    try (Scope ignored = run.makeCurrent()) {
      Span chat = tracer.spanBuilder("chat gpt-4o-mini").setSpanKind(SpanKind.CLIENT).startSpan();
      chat.setAllAttributes( // every attribute type the SDK has
          Attributes.builder()
              .put("gen_ai.request.model", "gpt-4o-mini")
              .put("gen_ai.request.stream", false)
              .put("gen_ai.usage.input_tokens", 21L)
              .put("gen_ai.request.temperature", 0.7)
              .put(AttributeKey.stringArrayKey("gen_ai.response.finish_reasons"), List.of("stop"))
              .put(AttributeKey.longArrayKey("prompt_token_ids"), List.of(101L, 2054L, 2003L))
              .put(AttributeKey.doubleArrayKey("logprobs"), List.of(-0.25, -1.5))
              .put(AttributeKey.booleanArrayKey("cache_hits"), List.of(true, false))
              .build());
      chat.addEvent("gen_ai.choice", Attributes.of(AttributeKey.longKey("index"), 0L));
      chat.setStatus(StatusCode.OK);
      chat.end();
      run.setAttribute("answer", 42L);
    } finally {
      run.end();
    }
    sdk.close(); // flush before the process exits
  }
}
