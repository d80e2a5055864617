// An agent service in Go: the stock OpenTelemetry SDK, otelhttp on its handler and a baggage
// copy processor, so every span it makes carries the rollout ids its caller put in W3C Baggage.
//
//	OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 PORT=8788 go run ./service
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/contrib/processors/baggagecopy"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

var numbers = regexp.MustCompile(`\d+`)

// Only Agent Lightning's keys are copied from Baggage onto spans.
func rolloutKeys(m baggage.Member) bool {
	return strings.HasPrefix(m.Key(), "agentlightning.")
}

func main() {
	ctx := context.Background()
	var exporter sdktrace.SpanExporter
	var err error
	if os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc" {
		exporter, err = otlptracegrpc.New(ctx)
	} else {
		exporter, err = otlptracehttp.New(ctx)
	}
	if err != nil {
		log.Fatal(err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "go-agent-service")),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		log.Fatal(err)
	}
	provider := sdktrace.NewTracerProvider(
		sdktrace.WithSpanProcessor(baggagecopy.NewSpanProcessor(rolloutKeys)),
		sdktrace.WithBatcher(exporter),
		sdktrace.WithResource(res),
	)
	otel.SetTracerProvider(provider)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(
		propagation.TraceContext{}, propagation.Baggage{}))
	tracer := provider.Tracer("go-agent-service")

	solve := func(w http.ResponseWriter, r *http.Request) {
		var task struct{ Question string }
		if err := json.NewDecoder(r.Body).Decode(&task); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, chat := tracer.Start(r.Context(), "chat gpt-4o-mini",
			trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(
				attribute.String("gen_ai.operation.name", "chat"),
				attribute.String("gen_ai.request.model", "gpt-4o-mini"),
				attribute.Int("gen_ai.usage.input_tokens", 20+len(task.Question))))
		defer chat.End()
		found := numbers.FindAllString(task.Question, 2)
		if strings.Contains(task.Question, "impossible") || len(found) < 2 {
			chat.SetStatus(codes.Error, "cannot solve")
			http.Error(w, `{"error":"cannot solve"}`, http.StatusInternalServerError)
			return
		}
		a, _ := strconv.Atoi(found[0])
		b, _ := strconv.Atoi(found[1])
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]int{"answer": a + b})
	}
	mux := http.NewServeMux()
	mux.Handle("/solve", otelhttp.NewHandler(http.HandlerFunc(solve), "POST /solve"))

	listener, err := net.Listen("tcp", "127.0.0.1:"+envOr("PORT", "8788"))
	if err != nil {
		log.Fatal(err)
	}
	server := &http.Server{Handler: mux}
	fmt.Printf("agent listening on http://%s/solve\n", listener.Addr())
	go func() { _ = server.Serve(listener) }()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	<-stop
	_ = server.Shutdown(ctx)
	_ = provider.Shutdown(ctx) // flushes what is still batched
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
