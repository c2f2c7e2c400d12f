# The charlm image for cluster.yaml (docs/cluster.md, The CUDA stack): Ray's CPU
# image at the Ray and Python of pyproject.toml, with charlm's dependencies and
# the gpu extra's CUDA and cuDNN wheels (the versions TensorFlow pins) installed,
# so that nodes start without installing them. The NVIDIA driver comes from the
# host (cluster.yaml's `--gpus all`). One image for the head and the workers.
#
#   docker build -t charlm:2.60.0-py311 .
FROM rayproject/ray:2.60.0-py311-cpu

# cluster.yaml mounts the synced checkout over this directory, so the editable
# install runs the code of the checkout; jobs ship theirs with --working-dir.
WORKDIR /home/ray/charlm
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users charlm charlm
COPY --chown=ray:users jobs jobs
RUN pip install --no-cache-dir -e ".[gpu]" "boto3>=1.28"
WORKDIR /home/ray
