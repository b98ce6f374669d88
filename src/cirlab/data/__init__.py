"""Dataset records and the cirlab dataset format."""
from .jsonl import load_dataset, read_gallery, read_triplets, write_dataset, write_json, write_jsonl
from .record import CIRDataset, CIRTriplet, Gallery

__all__ = ["CIRDataset", "CIRTriplet", "Gallery", "load_dataset", "read_gallery", "read_triplets",
           "write_dataset", "write_json", "write_jsonl"]
