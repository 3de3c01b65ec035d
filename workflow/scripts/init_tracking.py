"""Create (or upgrade) the MLflow tracking store once, before parallel jobs write to it.

Fresh sqlite stores race when several processes create them at once; this rule runs first and the
train jobs depend on its marker.
"""

import json
import os
import sys
from pathlib import Path

# Snakemake runs this file with its own interpreter; the package source sits two levels up.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent.parent / "src"))  # noqa: F821
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from jsae.io import setup_logging, write_json  # noqa: E402
from jsae.tracking import init_tracking_store  # noqa: E402

setup_logging(log_file=snakemake.log[0])  # noqa: F821
uri = snakemake.params.uri  # noqa: F821
result = init_tracking_store(uri)
write_json(snakemake.output.marker, {"tracking_uri": uri, "result": json.loads(json.dumps(result, default=str))})  # noqa: F821
