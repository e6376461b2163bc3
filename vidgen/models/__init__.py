from .attention import attention, available_attention_backends, register_attention_backend
from .autoencoder import AUTOENCODER_PRESETS, VidGenVideoAutoencoder
from .kv_cache import KVCache
from .transformer import VidGenTransformer3DModel, VidGenTransformerOutput
from .turbo2k import FeatureProjector, HierarchicalAdapter
from .vae import VAE_PRESETS, make_vae

__all__ = [
    "AUTOENCODER_PRESETS",
    "FeatureProjector",
    "HierarchicalAdapter",
    "KVCache",
    "VAE_PRESETS",
    "VidGenTransformer3DModel",
    "VidGenTransformerOutput",
    "VidGenVideoAutoencoder",
    "attention",
    "available_attention_backends",
    "make_vae",
    "register_attention_backend",
]
