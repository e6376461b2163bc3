from .attention import attention, available_attention_backends, register_attention_backend
from .autoencoder import VidGenVideoAutoencoder
from .kv_cache import KVCache
from .transformer import VidGenTransformer3DModel
from .vae import VAE_PRESETS, make_vae

__all__ = [
    "KVCache",
    "VAE_PRESETS",
    "VidGenTransformer3DModel",
    "VidGenVideoAutoencoder",
    "attention",
    "available_attention_backends",
    "make_vae",
    "register_attention_backend",
]
