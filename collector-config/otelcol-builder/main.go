// Command callspan-otelcol is a minimal OpenTelemetry Collector distribution
// for callspan: it has only the components that collector-config/otelcol.yaml
// needs (plus a debug exporter for troubleshooting), so it builds in a few
// minutes from the Go module proxy and stays small.
//
// Components (all at the collector v0.161.0 release):
//
//	receivers:  otlp (gRPC + HTTP)
//	processors: batch, memory_limiter
//	exporters:  file (contrib), otlp_grpc (alias otlp), otlp_http (alias otlphttp), debug
//
// Config sources: file:, env:, yaml: URIs; a bare --config path is a file.
//
// Build with scripts/build-otel-binaries.sh.
package main

import (
	"fmt"
	"os"

	"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/confmap/provider/yamlprovider"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/debugexporter"
	"go.opentelemetry.io/collector/exporter/otlpexporter"
	"go.opentelemetry.io/collector/exporter/otlphttpexporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/collector/processor/batchprocessor"
	"go.opentelemetry.io/collector/processor/memorylimiterprocessor"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

const (
	distName = "callspan-otelcol"
	// distVersion names the upstream collector release the distribution is built from.
	distVersion = "0.161.0"

	coreModule    = "go.opentelemetry.io/collector/"
	contribModule = "github.com/open-telemetry/opentelemetry-collector-contrib/"
)

// components returns the factories of every component in this distribution,
// with the Go module each one comes from (shown by `callspan-otelcol components`).
func components() (otelcol.Factories, error) {
	var (
		factories otelcol.Factories
		err       error
	)

	factories.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](
		otlpreceiver.NewFactory(),
	)
	if err != nil {
		return otelcol.Factories{}, fmt.Errorf("receivers: %w", err)
	}
	factories.ReceiverModules = moduleMap(factories.Receivers, map[string]string{
		"otlp": coreModule + "receiver/otlpreceiver v" + distVersion,
	})

	factories.Processors, err = otelcol.MakeFactoryMap[processor.Factory](
		batchprocessor.NewFactory(),
		memorylimiterprocessor.NewFactory(),
	)
	if err != nil {
		return otelcol.Factories{}, fmt.Errorf("processors: %w", err)
	}
	factories.ProcessorModules = moduleMap(factories.Processors, map[string]string{
		"batch":          coreModule + "processor/batchprocessor v" + distVersion,
		"memory_limiter": coreModule + "processor/memorylimiterprocessor v" + distVersion,
	})

	factories.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](
		debugexporter.NewFactory(),
		otlpexporter.NewFactory(),
		otlphttpexporter.NewFactory(),
		fileexporter.NewFactory(),
	)
	if err != nil {
		return otelcol.Factories{}, fmt.Errorf("exporters: %w", err)
	}
	factories.ExporterModules = moduleMap(factories.Exporters, map[string]string{
		"debug":     coreModule + "exporter/debugexporter v" + distVersion,
		"otlp_grpc": coreModule + "exporter/otlpexporter v" + distVersion,
		"otlp":      coreModule + "exporter/otlpexporter v" + distVersion,
		"otlp_http": coreModule + "exporter/otlphttpexporter v" + distVersion,
		"otlphttp":  coreModule + "exporter/otlphttpexporter v" + distVersion,
		"file":      contribModule + "exporter/fileexporter v" + distVersion,
	})

	// No extensions or connectors: the callspan pipeline needs none.
	factories.Telemetry = otelconftelemetry.NewFactory()
	return factories, nil
}

// moduleMap keys the module names by component type, for every type present
// in factories (deprecated aliases included).
func moduleMap[T component.Factory](factories map[component.Type]T, modules map[string]string) map[component.Type]string {
	out := make(map[component.Type]string, len(factories))
	for typ := range factories {
		if mod, ok := modules[typ.String()]; ok {
			out[typ] = mod
		}
	}
	return out
}

func main() {
	settings := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     distName,
			Description: "callspan's minimal OpenTelemetry Collector distribution",
			Version:     distVersion,
		},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{
					envprovider.NewFactory(),
					fileprovider.NewFactory(),
					yamlprovider.NewFactory(),
				},
				// ${VAR} without a scheme means ${env:VAR}, as in the upstream distributions.
				DefaultScheme: "env",
			},
		},
	}

	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", distName, err)
		os.Exit(1)
	}
}
