go install go.opentelemetry.io/collector/cmd/builder@v0.136.0
export PATH="$(go env GOPATH)/bin:$PATH"    # go install puts builder there
builder --config collector-config/builder-config.yaml       # writes ./otelcol-lightning/otelcol-lightning
./otelcol-lightning/otelcol-lightning --config collector-config/sidecar.yaml
