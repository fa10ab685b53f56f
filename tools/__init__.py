"""Tools beside the product, not part of it: the demo (demo, demo_data), the benchmark
(bench), the GPU check (gpucheck), export's measurement script (export_measure), and the
evaluations (forecast_eval, shift_eval, trust_eval, trends_scale). Some reach into stage
modules to measure a single step (export's graphs and checks, the runtime's results
writer, the trends forecaster); the product's own code never imports a tool. They find
their data through flags (`options.data_option`: `--data`, default relative to the
working directory), never through the location of the source checkout.
"""
