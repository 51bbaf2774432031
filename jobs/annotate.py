"""Ray job entry point: annotate images and videos with human poses.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/annotate.py --config configs/gpu-cluster.yaml --set input=s3://bucket/media/ --set output=s3://bucket/poses/

The job connects to the cluster it was submitted to (RAY_ADDRESS) and runs the
same pipeline as `openpose-ray run`; settings live in the YAML, not here.
"""

import os
import sys

# With --working-dir the repository is the job's working directory; make the
# package importable even where it is not installed on the cluster's nodes.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from openpose_ray.run_command import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
