# wav2vec 2.0 training container, on NVIDIA's NGC PyTorch image (CUDA, cuDNN, NCCL, PyTorch; the reference used
# 22.11-py3). Build: bash scripts/docker/build.sh   Run: bash scripts/docker/run.sh (datasets mounted at /datasets).
ARG FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:25.05-py3
FROM ${FROM_IMAGE_NAME}

# NGC images force TF32 in cuBLAS (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1) whatever the code asks: 0 gives the
# decision back to --tf32 (default true, so the recipes' default is unchanged; --tf32 false is then real FP32)
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/workspace/wav2vec2 \
    TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=0
WORKDIR /workspace/wav2vec2

# NVIDIA apex: the training uses its FusedAdam on CUDA when it is importable (common/optim.py, "auto"), torch's fused
# AdamW otherwise. Older NGC PyTorch images ship apex (the reference's 22.11 did); where this one does not, it is
# built here from NVIDIA's repository with its C++/CUDA extensions (FusedAdam needs them; a few minutes with nvcc).
# NVIDIA dllogger is installed from its repository (PyPI's "nvidia-dllogger" is another package). numpy and
# tensorboard come with the image. Torch is NOT reinstalled: the project is installed with --no-deps so that pip
# keeps the image's CUDA build of torch.
ARG APEX_REF=master
RUN pip install --no-cache-dir 'soundfile>=0.12' 'editdistance>=0.6' \
    && pip install --no-cache-dir 'git+https://github.com/NVIDIA/dllogger@v1.0.0#egg=dllogger' \
    && if python -c 'from apex.optimizers import FusedAdam; import amp_C' 2>/dev/null; then \
           echo "NVIDIA apex with its CUDA extensions: from the base image"; \
       else \
           APEX_CPP_EXT=1 APEX_CUDA_EXT=1 pip install -v --no-cache-dir --no-build-isolation \
               --config-settings "--build-option=--cpp_ext" --config-settings "--build-option=--cuda_ext" \
               "git+https://github.com/NVIDIA/apex@${APEX_REF}" \
           && python -c 'from apex.optimizers import FusedAdam; import amp_C'; \
       fi

COPY . .
RUN pip install --no-cache-dir --no-deps -e .

CMD ["bash"]
