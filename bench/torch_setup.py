"""bench/torch_setup.py -- what the PyTorch references (fmnist_torch.py,
seq_torch.py) set up alike: threads, seed, device and the GPU switches."""
import torch


def torch_setup(a):
    """From parsed args with threads, seed, device and tf32: the device, and
    whether it is a GPU (fp32 matmuls and convolutions unless --tf32, cuDNN
    autotuning on)."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    gpu = dev.type == "cuda"
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
        torch.backends.cudnn.benchmark = True
    return dev, gpu
