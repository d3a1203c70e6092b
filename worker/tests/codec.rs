//! The training crate's codec of a trial's saved state (`cbsweep_train::codec`) and the wire
//! message the worker once wrote those bytes with (`v1::TrialCheckpoint`) read each other's
//! bytes: a state saved by an earlier worker resumes on this one.

use cbsweep_proto::v1;
use cbsweep_train::codec::SavedTrial;
use prost::Message;

fn wire() -> v1::TrialCheckpoint {
    v1::TrialCheckpoint {
        format: 1,
        trial_id: "abc".into(),
        epochs_done: 7,
        level: 4,
        levels_solved: 3,
        steps_done: 700,
        stream_words: vec![1, 2, 3, u64::MAX],
        curve: vec![v1::EpochRecord {
            epoch: 1,
            level: 2,
            train_loss: 0.25,
            test_accuracy: 0.75,
            solved: true,
            grad_norm: 1.5,
            core_learning: true,
            cb_learning: false,
        }],
        analyses: vec![v1::AnalysisRecord { level: 2, epoch: 1, population: "core".into(), metric: "pc1".into(), value: -0.5 }],
        wall_time_ms: 1234,
        kind: "f32".into(),
        params: vec![vec![1, 2, 3, 4], vec![]],
        momentum: vec![vec![5, 6, 7, 8]],
    }
}

#[test]
fn codec_reads_what_the_wire_message_wrote_and_back() {
    let old = wire();
    let read = SavedTrial::decode(&old.encode_to_vec()).unwrap();
    assert_eq!(
        (read.trial_id.as_str(), read.epochs_done, read.level, read.levels_solved, read.steps_done, read.wall_time_ms),
        ("abc", 7, 4, 3, 700, 1234)
    );
    assert_eq!(read.stream_words, old.stream_words);
    assert_eq!((read.curve()[0].train_loss, read.curve()[0].solved), (0.25, true));
    assert_eq!(read.analyses()[0].metric, "pc1");
    assert_eq!((read.params.clone(), read.momentum.clone(), read.kind.as_str()), (old.params.clone(), old.momentum.clone(), "f32"));
    // the same bytes both ways
    assert_eq!(read.encode_to_vec(), old.encode_to_vec());
    assert_eq!(v1::TrialCheckpoint::decode(read.encode_to_vec().as_slice()).unwrap(), old);
}
