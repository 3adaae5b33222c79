"""Self-supervised pre-training: MoCo v3 (:mod:`.mocov3`) and DINO (:mod:`.dino`), each with SDMP's
data mixing (:mod:`.sdmp`) as an option; MoCo v2 (:mod:`.mocov2`), with CropMix or ScaleMix queries,
and SAMix's self-supervised variant on it (:mod:`.samix`); MAE (:mod:`.mae`), with CropMix as an
input option; the shared base class in :mod:`.base`."""

from mixlab.ssl.base import SelfSupervised, embed, feature_dim
from mixlab.ssl.dino import DINO, DINOHead
from mixlab.ssl.mae import MAE
from mixlab.ssl.mocov2 import MoCoV2
from mixlab.ssl.mocov3 import MoCoV3
from mixlab.ssl.samix import SAMixSSL
from mixlab.ssl.sdmp import SDMPMixing

__all__ = ["SelfSupervised", "MoCoV2", "SAMixSSL", "MoCoV3", "DINO", "DINOHead", "MAE", "SDMPMixing", "embed", "feature_dim"]
