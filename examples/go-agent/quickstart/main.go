// A Go agent reporting to lightning-otlp with the stock OpenTelemetry SDK only.
//
//	OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
//	OTEL_RESOURCE_ATTRIBUTES=agentlightning.rollout_id=ro-0123456789ab,agentlightning.attempt_id=at-01234567 \
//	go run ./quickstart
package main

import (
	"context"
	"log"
	"os"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func main() {
	ctx := context.Background()
	// OTEL_EXPORTER_OTLP_ENDPOINT: http://127.0.0.1:4317 for gRPC, http://127.0.0.1:4318 for HTTP.
	var exporter sdktrace.SpanExporter
	var err error
	if os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc" {
		exporter, err = otlptracegrpc.New(ctx)
	} else {
		exporter, err = otlptracehttp.New(ctx) // http/protobuf, the SDK default
	}
	if err != nil {
		log.Fatal(err)
	}
	// The rollout and attempt ids arrive through OTEL_RESOURCE_ATTRIBUTES.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "go-agent")),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		log.Fatal(err)
	}
	provider := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	defer func() { _ = provider.Shutdown(ctx) }() // flush before the process exits
	tracer := provider.Tracer("go-agent")

	ctx, run := tracer.Start(ctx, "agent run")
	_, chat := tracer.Start(ctx, "chat gpt-4o-mini", trace.WithSpanKind(trace.SpanKindClient))
	chat.SetAttributes( // every attribute type the SDK has
		attribute.String("gen_ai.request.model", "gpt-4o-mini"),
		attribute.Bool("gen_ai.request.stream", false),
		attribute.Int("gen_ai.usage.input_tokens", 21),
		attribute.Float64("gen_ai.request.temperature", 0.7),
		attribute.StringSlice("gen_ai.response.finish_reasons", []string{"stop"}),
		attribute.IntSlice("prompt_token_ids", []int{101, 2054, 2003}),
		attribute.Float64Slice("logprobs", []float64{-0.25, -1.5}),
		attribute.BoolSlice("cache_hits", []bool{true, false}),
	)
	chat.AddEvent("gen_ai.choice", trace.WithAttributes(attribute.Int("index", 0)))
	chat.SetStatus(codes.Ok, "")
	chat.End()
	run.SetAttributes(attribute.Int("answer", 42))
	run.End()
}
