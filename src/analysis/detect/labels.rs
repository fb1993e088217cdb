//! Class names: COCO by default, or a labels file.

use std::path::Path;

/// COCO's 80 classes, in the order YOLO-family models output them.
pub const COCO80: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// COCO category ids that the 2014 paper defined but the data set never used; TensorFlow's
/// Object Detection API keeps the original numbering (1 = person ... 90 = toothbrush) with these gaps.
const COCO91_GAPS: [usize; 10] = [12, 26, 29, 30, 45, 66, 68, 69, 71, 83];

/// COCO80 names at their 91-numbering ids (index 0 is the background class).
pub fn coco91() -> Vec<String> {
    let mut names = COCO80.iter();
    (0..=90)
        .map(|id| match id {
            0 => "background".to_owned(),
            _ if COCO91_GAPS.contains(&id) => format!("unused{id}"),
            _ => names.next().map_or_else(|| format!("class{id}"), |n| (*n).to_owned()),
        })
        .collect()
}

pub fn coco80() -> Vec<String> {
    COCO80.iter().map(|n| (*n).to_owned()).collect()
}

/// Why a labels file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error("expected one class name per line, found none")]
    Empty,
}

/// Reads a labels file: one class name per non-empty line, in the model's class order.
pub fn read(path: &Path) -> Result<Vec<String>, LabelsError> {
    let text = std::fs::read_to_string(path)?;
    let labels: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if labels.is_empty() {
        return Err(LabelsError::Empty);
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coco91_keeps_tensorflow_ids() {
        let l = coco91();
        assert_eq!(l.len(), 91);
        assert_eq!(l[1], "person");
        assert_eq!(l[3], "car");
        assert_eq!(l[8], "truck");
        assert_eq!(l[13], "stop sign");
        assert_eq!(l[90], "toothbrush");
        assert_eq!(l[12], "unused12");
    }
}
