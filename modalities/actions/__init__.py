"""Robot-action modality: Meta-World simulation and scripted experts (:mod:`.sim`), expert
demonstrations recorded as LeRobotDataset v3 (:mod:`.collect`) and action-chunk datasets for
training π0-style flow policies (:mod:`.data`)."""
