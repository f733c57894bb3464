"""Speed settings and kernels for particular hardware."""
