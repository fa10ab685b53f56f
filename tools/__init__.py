"""Tools beside the product: the demo, the benchmark, the GPU check and export's
measurement script. They use the core and the stages through their public APIs and
find their data through flags (with defaults relative to the working directory), never
through the location of the source checkout.
"""
