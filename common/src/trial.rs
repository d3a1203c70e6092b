//! One trial: a cell of the sweep grid with everything a worker needs to train it.

use crate::ids::{Seed, SweepId, TrialId};
use crate::model_size;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// The memory task a trial learns (docs/science.md#tasks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Dms,
    Parity,
    Oddball,
}

/// A trial's model (docs/science.md#models): a recurrent core (a leaky Elman RNN or a GRU) with
/// or without a second module whose output enters the core as an additive bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// `rnn`: the plain Elman RNN (the baseline, its H matched to a CB-RNN's count).
    Rnn,
    /// `cbrnn`: the Elman RNN with the cerebellar module.
    Cbrnn,
    /// `rmrnn`: the recurrent-module control, the Elman RNN with the cerebellar module replaced
    /// by a small leaky recurrent network of A units with a matched count
    /// (docs/science.md#recurrent-module-control).
    Rmrnn,
    /// `cbgru`: the GRU core (LeakyReLU candidate) with the cerebellar module
    /// (docs/science.md#gru-variant).
    Cbgru,
    /// `gru`: the plain GRU core (the baseline, its H matched to a CB-GRU's count).
    Gru,
}

/// The second module a model has, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    /// Granule -> Purkinje -> deep nuclei, feedforward.
    Cerebellar,
    /// A leaky recurrent network of A units (the recurrent-module control).
    Recurrent,
}

/// The recurrent core of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Core {
    /// The leaky Elman RNN.
    Elman,
    /// The gated recurrent unit with a LeakyReLU candidate.
    Gru,
}

impl Arch {
    /// Every architecture, in the order their names are listed.
    pub const ALL: [Arch; 5] = [Arch::Rnn, Arch::Cbrnn, Arch::Rmrnn, Arch::Cbgru, Arch::Gru];

    /// The module whose output biases the core (None for the plain baselines).
    pub fn module(self) -> Option<ModuleKind> {
        match self {
            Arch::Rnn | Arch::Gru => None,
            Arch::Cbrnn | Arch::Cbgru => Some(ModuleKind::Cerebellar),
            Arch::Rmrnn => Some(ModuleKind::Recurrent),
        }
    }

    /// The recurrent core.
    pub fn core(self) -> Core {
        match self {
            Arch::Rnn | Arch::Cbrnn | Arch::Rmrnn => Core::Elman,
            Arch::Cbgru | Arch::Gru => Core::Gru,
        }
    }

    /// The name in specs, tables and cell keys.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Rnn => "rnn",
            Arch::Cbrnn => "cbrnn",
            Arch::Rmrnn => "rmrnn",
            Arch::Cbgru => "cbgru",
            Arch::Gru => "gru",
        }
    }
}

/// When the recurrent core stops learning in the reservoir and interleaved regimes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "at", content = "value", rename_all = "lowercase")]
pub enum FreezePoint {
    /// Once this curriculum level has been solved.
    Level(u32),
    /// After this many epochs.
    Epoch(u32),
    /// After this many SGD steps.
    Step(u64),
    Never,
}

/// Which modules learn when (docs/science.md#regimes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Regime {
    /// Every parameter learns throughout.
    Simult,
    /// Core and readout learn (module frozen) until the freeze point; then module and readout.
    Reservoir { freeze: FreezePoint },
    /// Like reservoir, but during every `every`-th level after the first both modules learn.
    Interleaved { freeze: FreezePoint, every: u32 },
}

/// The training budget and curriculum of a trial.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainBudget {
    pub epochs: u32,
    pub steps_per_epoch: u32,
    pub test_batches: u32,
    pub batch_size: u32,
    pub start_level: u32,
    pub max_level: u32,
    pub solve_threshold: f64,
    pub momentum: f64,
    pub clip_norm: f64,
    /// Climb from `start_level` (the study's curriculum) or train at it for the whole budget.
    /// Left out of the hashed form when climbing, so every earlier trial keeps its id.
    #[serde(default, skip_serializing_if = "Curriculum::is_climb")]
    pub curriculum: Curriculum,
}

/// How a trial's level moves (docs/science.md#curriculum).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Curriculum {
    /// Each solved level moves the trial to the next, up to `max_level`, where it ends.
    #[default]
    Climb,
    /// The trial trains and is tested at `start_level` (= `max_level`) for every epoch of its
    /// budget; a solved epoch is recorded and neither moves nor ends it (spec:
    /// `train.fixed_level` with `train.fixed_until = "budget"`).
    Fixed,
    /// The lab's fixed level: trains and is tested at `start_level` (= `max_level`) until the
    /// first solved epoch, which ends the trial (spec: `train.fixed_level`, the default
    /// `train.fixed_until = "solved"`).
    FixedUntilSolved,
    /// The lab's fixed-schedule control: the level goes up by one after every `every` epochs,
    /// whatever the accuracy; the trial ends once its `every` epochs at `max_level` are done.
    /// A solved test is recorded (and its first at a level analysed) but moves nothing (spec:
    /// `train.schedule_every`).
    Schedule { every: u32 },
}

impl Curriculum {
    pub fn is_climb(&self) -> bool {
        *self == Curriculum::Climb
    }

    /// Whether the trial stays at one level for its whole run.
    pub fn is_fixed(&self) -> bool {
        matches!(self, Curriculum::Fixed | Curriculum::FixedUntilSolved)
    }

    /// Whether a solved test moves the trial on (to the next level, or to its end).
    pub fn solving_moves(&self) -> bool {
        matches!(self, Curriculum::Climb | Curriculum::FixedUntilSolved)
    }
}

/// Which analyses a trial runs at its checkpoints (docs/science.md#analyses), and their sizes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisPlan {
    /// Analyse at every k-th solved level (0: never).
    pub every_levels: u32,
    /// Fixed batches for the ablation (module on / off accuracy).
    pub ablation_batches: u32,
    /// Batches of activity for the PCA dimensionality.
    pub dimensionality_batches: u32,
    /// Steps of Bernoulli input for the timescales (0: skip timescales).
    pub timescale_steps: u32,
    pub timescale_trials: u32,
    pub timescale_burn_in: u32,
    pub timescale_max_lag: u32,
    /// Lags 0..=fit_lags are fitted with one and two exponentials.
    pub timescale_fit_lags: u32,
    /// Save each checkpoint's weights (safetensors) beside the results.
    pub save_checkpoints: bool,
    /// SGD steps of the readout-recovery analysis (the readout alone relearnt with the module
    /// off; 0: skip it). Left out of the hashed form at the study's 500, so earlier trials keep
    /// their ids.
    #[serde(default = "study_recovery_steps", skip_serializing_if = "is_study_recovery_steps")]
    pub recovery_steps: u32,
    /// Fixed batches the readout recovery is evaluated on (left out at the study's 50).
    #[serde(default = "study_recovery_eval_batches", skip_serializing_if = "is_study_recovery_eval_batches")]
    pub recovery_eval_batches: u32,
}

/// The study's readout recovery: 500 steps, evaluated on 50 batches (docs/science.md).
pub const STUDY_RECOVERY_STEPS: u32 = 500;
pub const STUDY_RECOVERY_EVAL_BATCHES: u32 = 50;

fn study_recovery_steps() -> u32 {
    STUDY_RECOVERY_STEPS
}

fn is_study_recovery_steps(v: &u32) -> bool {
    *v == STUDY_RECOVERY_STEPS
}

fn study_recovery_eval_batches() -> u32 {
    STUDY_RECOVERY_EVAL_BATCHES
}

fn is_study_recovery_eval_batches(v: &u32) -> bool {
    *v == STUDY_RECOVERY_EVAL_BATCHES
}

impl AnalysisPlan {
    /// The study's sizes (docs/science.md), analysing every solved level.
    pub fn study() -> AnalysisPlan {
        AnalysisPlan {
            every_levels: 1,
            ablation_batches: 20,
            dimensionality_batches: 10,
            timescale_steps: 20_000,
            timescale_trials: 8,
            timescale_burn_in: 500,
            timescale_max_lag: 200,
            timescale_fit_lags: 30,
            save_checkpoints: true,
            recovery_steps: STUDY_RECOVERY_STEPS,
            recovery_eval_batches: STUDY_RECOVERY_EVAL_BATCHES,
        }
    }
}

/// Everything that defines one trial. Its id is a hash of this and the code version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialSpec {
    pub sweep: SweepId,
    pub task: Task,
    pub arch: Arch,
    /// Hidden units of the core (for the plain RNN and GRU: the matched size).
    pub hidden: u32,
    /// Granule units of the cerebellar module (for the plain baselines: the model with the
    /// module they are matched to; for the recurrent-module control: the module it replaces).
    pub granule: u32,
    pub purkinje: u32,
    pub seed: Seed,
    pub regime: Regime,
    pub lr_core: f64,
    pub lr_cb: f64,
    pub lr_readout: f64,
    /// Factor on the core's learning rate (reduced recurrent plasticity); 1 = none.
    pub core_plasticity: f64,
    pub budget: TrainBudget,
    pub analysis: AnalysisPlan,
    /// The hidden size of the grid's shape (hidden, granule, purkinje) this trial comes from: its
    /// own for the CB-RNN, the CB-RNN's it is matched to for the others. Left out of the hashed
    /// form at the study's 64, so the trials of sweeps that never varied it keep their ids.
    #[serde(default = "study_size", skip_serializing_if = "is_study_size")]
    pub grid_hidden: u32,
    /// The GRU cell a `cbgru` or `gru` trial computes; `Original` (left out of the hashed form)
    /// for the other architectures, so their ids stay as they were.
    #[serde(default, skip_serializing_if = "GruCell::is_original")]
    pub gru_cell: GruCell,
    /// How an `rmrnn` trial's module starts; `Original` (left out of the hashed form) for the
    /// other architectures, so their ids stay as they were.
    #[serde(default, skip_serializing_if = "ModuleStart::is_original")]
    pub module_start: ModuleStart,
}

/// The GRU cell (docs/science.md#gru-variant). A trial spec without the field is `Original`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GruCell {
    /// What older cbsweep computed for a GRU trial: PyTorch's GRUCell gate convention, the reset
    /// applied after the state product. No longer computed: a worker refuses a GRU trial of it.
    /// Also the value of every architecture without a GRU core (no cell at all).
    #[default]
    Original,
    /// The lab's cell: a linear layer per gate for the input and one for the state, the reset
    /// before the state product, the rescaling's reference norm without gradient.
    Lab,
}

impl GruCell {
    pub fn is_original(&self) -> bool {
        *self == GruCell::Original
    }

    /// The cell a trial of `arch` computes: the lab's for a GRU core, `Original` (none) else.
    pub fn of(arch: Arch) -> GruCell {
        match arch.core() {
            Core::Gru => GruCell::Lab,
            Core::Elman => GruCell::Original,
        }
    }
}

/// How the recurrent-module control's module starts (docs/science.md#recurrent-module-control;
/// spec: `model.recurrent_module_start`). A trial spec without the field is `Original`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleStart {
    /// What older cbsweep computed for an `rmrnn` trial: the near-zero start, its timescale drive
    /// restarting the module's state from 0 at every chunk. No longer computed: a worker refuses
    /// an `rmrnn` trial of it. Also the value of every architecture without the module.
    #[default]
    Original,
    /// a_0 = 0, the output layer W_out ~ N(0, 0.01^2) with b_out = 0 (`"near_zero"`).
    NearZero,
    /// The lab's: a_0 = 0.1 U(0, 1) per unit, like h_0, and the linear-layer default for every
    /// layer, the output layer included (`"lab"`, the default).
    Lab,
}

impl ModuleStart {
    /// The names a spec may give, in the order of the variants.
    pub const NAMES: [&str; 2] = ["near_zero", "lab"];

    pub fn is_original(&self) -> bool {
        *self == ModuleStart::Original
    }

    /// The start a trial of `arch` takes when the spec asks for `self`: `self` for the
    /// recurrent-module control, `Original` (no such module) for the others.
    pub fn of(self, arch: Arch) -> ModuleStart {
        match arch.module() {
            Some(ModuleKind::Recurrent) => self,
            _ => ModuleStart::Original,
        }
    }
}

impl FromStr for ModuleStart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "near_zero" => Ok(ModuleStart::NearZero),
            "lab" => Ok(ModuleStart::Lab),
            _ => Err(format!("expected one of: {}", ModuleStart::NAMES.map(|n| format!("{n:?}")).join(", "))),
        }
    }
}

/// The study's hidden and Purkinje size (docs/science.md), the default of both.
pub const STUDY_SIZE: u32 = 64;

fn study_size() -> u32 {
    STUDY_SIZE
}

fn is_study_size(v: &u32) -> bool {
    *v == STUDY_SIZE
}

/// Trials with equal pack keys have the same tensor shapes and budget and can train together as
/// one batched computation on one worker.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PackKey(pub String);

impl TrialSpec {
    /// Content hash of this spec and the code version: the trial's identity.
    pub fn id(&self) -> TrialId {
        let json = serde_json::to_string(self).expect("trial spec serialises");
        let mut h = Sha256::new();
        h.update(crate::CODE_VERSION.as_bytes());
        h.update([0]);
        h.update(json.as_bytes());
        TrialId(hex::encode(&h.finalize()[..10]))
    }

    /// Trainable parameters of this trial's model.
    pub fn param_count(&self) -> u64 {
        let (h, g, p) = (self.hidden, self.granule, self.purkinje);
        match self.arch {
            Arch::Rnn => model_size::rnn_params(h),
            Arch::Cbrnn => model_size::cbrnn_params(h, g, p),
            Arch::Rmrnn => model_size::rmrnn_params(h, g, p),
            Arch::Cbgru => model_size::cbgru_params(h, g, p),
            Arch::Gru => model_size::gru_params(h),
        }
    }

    /// Units A of the recurrent-module control's module (None for the other architectures):
    /// derived from the cerebellar module it replaces, so it is no field of the spec.
    pub fn module_units(&self) -> Option<u32> {
        match self.arch {
            Arch::Rmrnn => Some(model_size::recurrent_module_units(self.hidden, self.granule, self.purkinje)),
            _ => None,
        }
    }

    /// Human-readable grid coordinates; unique within a sweep. The grid's hidden and Purkinje
    /// sizes appear when either differs from the study's 64 (so the keys of sweeps that never
    /// varied them are as they were): `... arch=rnn hidden=29 granule=256 purkinje=29 seed=0 ...`.
    pub fn cell_key(&self) -> String {
        let sizes = if (self.grid_hidden, self.purkinje) == (STUDY_SIZE, STUDY_SIZE) {
            format!("granule={}", self.granule)
        } else {
            format!("hidden={} granule={} purkinje={}", self.grid_hidden, self.granule, self.purkinje)
        };
        format!(
            "task={} arch={} {sizes} seed={} regime={} freeze={} refresh={} core_plasticity={} lr_core={} lr_cb={}",
            self.task,
            self.arch,
            self.seed,
            self.regime.name(),
            self.regime.freeze_label(),
            self.regime.refresh_every().unwrap_or(0),
            self.core_plasticity,
            self.lr_core,
            self.lr_cb
        )
    }

    /// The condition a trial belongs to: its cell key without the seed.
    pub fn condition(&self) -> String {
        self.cell_key().split(' ').filter(|kv| !kv.starts_with("seed=")).collect::<Vec<_>>().join(" ")
    }

    /// Trials with equal pack keys share shapes and the whole budget (analysis plans may differ).
    pub fn pack_key(&self) -> PackKey {
        let budget = serde_json::to_string(&self.budget).expect("budget serialises");
        PackKey(format!("{}:h{}:g{}:p{}:{budget}", self.arch, self.hidden, self.granule, self.purkinje))
    }
}

/// Shortens cell keys and conditions for people: drops the `key=value` parts that every one of
/// `labels` shares (in a sweep over tasks and architectures only, "task=dms arch=rnn").
pub fn varying_parts<'a>(labels: impl IntoIterator<Item = &'a str>) -> impl Fn(&str) -> String + Send + 'static {
    let mut common: Option<std::collections::BTreeSet<String>> = None;
    for l in labels {
        let parts: std::collections::BTreeSet<String> = l.split(' ').map(str::to_owned).collect();
        common = Some(match common {
            None => parts,
            Some(c) => c.intersection(&parts).cloned().collect(),
        });
    }
    let common = common.unwrap_or_default();
    move |label: &str| {
        let kept: Vec<&str> = label.split(' ').filter(|p| !common.contains(*p) || p.starts_with("seed=")).collect();
        if kept.is_empty() { label.to_string() } else { kept.join(" ") }
    }
}

impl Regime {
    pub fn name(&self) -> &'static str {
        match self {
            Regime::Simult => "simult",
            Regime::Reservoir { .. } => "reservoir",
            Regime::Interleaved { .. } => "interleaved",
        }
    }

    pub fn kind(&self) -> RegimeKind {
        match self {
            Regime::Simult => RegimeKind::Simult,
            Regime::Reservoir { .. } => RegimeKind::Reservoir,
            Regime::Interleaved { .. } => RegimeKind::Interleaved,
        }
    }

    pub fn freeze(&self) -> FreezePoint {
        match self {
            Regime::Simult => FreezePoint::Never,
            Regime::Reservoir { freeze } | Regime::Interleaved { freeze, .. } => *freeze,
        }
    }

    pub fn freeze_label(&self) -> String {
        self.freeze().to_string()
    }

    pub fn refresh_every(&self) -> Option<u32> {
        match self {
            Regime::Interleaved { every, .. } => Some(*every),
            _ => None,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::Dms => "dms",
            Task::Parity => "parity",
            Task::Oddball => "oddball",
        })
    }
}

impl FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dms" => Ok(Task::Dms),
            "parity" => Ok(Task::Parity),
            "oddball" => Ok(Task::Oddball),
            _ => Err("unknown task (expected one of: dms, parity, oddball)".into()),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Arch::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
            format!("unknown architecture (expected one of: {})", names.join(", "))
        })
    }
}

/// A regime without its freeze point and refresh: what a statistics comparison may select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegimeKind {
    Simult,
    Reservoir,
    Interleaved,
}

impl RegimeKind {
    pub const ALL: [RegimeKind; 3] = [RegimeKind::Simult, RegimeKind::Reservoir, RegimeKind::Interleaved];

    pub fn name(self) -> &'static str {
        match self {
            RegimeKind::Simult => "simult",
            RegimeKind::Reservoir => "reservoir",
            RegimeKind::Interleaved => "interleaved",
        }
    }
}

impl FromStr for RegimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RegimeKind::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| "unknown regime (expected one of: simult, reservoir, interleaved)".to_string())
    }
}

impl fmt::Display for RegimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One side of a statistics comparison (`[stats] compare`): an architecture's conditions, in
/// one regime when `regime` is given (`"cbrnn:reservoir"`), else in every regime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CompareSide {
    pub arch: Arch,
    pub regime: Option<RegimeKind>,
}

/// A comparison the statistics make: group a against group b, every other grid key equal. When
/// neither side names a regime the two groups share it too (and its freeze point); when one
/// does, regime, freeze point and refresh may differ (claim 3: the reservoir CB-RNN against the
/// simult RNN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComparePair {
    pub a: CompareSide,
    pub b: CompareSide,
}

/// What `cbsweep stats` compares in a sweep (`[stats]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsPlan {
    pub pairs: Vec<ComparePair>,
    /// Also compare every non-simult regime and freeze point with simult, the same architecture
    /// and every other key equal (`freeze_vs_simult`).
    pub freeze_vs_simult: bool,
}

impl CompareSide {
    pub fn arch(arch: Arch) -> Self {
        CompareSide { arch, regime: None }
    }

    /// Whether a trial of `spec` is in this side's group.
    pub fn selects(&self, spec: &TrialSpec) -> bool {
        spec.arch == self.arch && self.regime.is_none_or(|r| spec.regime.kind() == r)
    }
}

impl ComparePair {
    /// The grid keys on which the two groups may differ (the condition's key names).
    pub fn differing_keys(&self) -> &'static [&'static str] {
        if self.a.regime.is_none() && self.b.regime.is_none() { &["arch"] } else { &["arch", "regime", "freeze", "refresh"] }
    }
}

impl Default for StatsPlan {
    /// The CB-RNN against the matched RNN, and each freeze point against simult.
    fn default() -> Self {
        StatsPlan {
            pairs: vec![ComparePair { a: CompareSide::arch(Arch::Cbrnn), b: CompareSide::arch(Arch::Rnn) }],
            freeze_vs_simult: true,
        }
    }
}

impl FromStr for CompareSide {
    type Err = String;
    /// `"cbrnn"` or `"cbrnn:reservoir"`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (arch, regime) = match s.split_once(':') {
            Some((a, r)) => (a, Some(r.parse::<RegimeKind>()?)),
            None => (s, None),
        };
        Ok(CompareSide { arch: arch.parse()?, regime })
    }
}

impl fmt::Display for CompareSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.regime {
            Some(r) => write!(f, "{}:{r}", self.arch),
            None => write!(f, "{}", self.arch),
        }
    }
}

impl fmt::Display for ComparePair {
    /// The comparison column's value: `cbrnn_vs_rnn`, `cbrnn:reservoir_vs_rnn:simult`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_vs_{}", self.a, self.b)
    }
}

impl fmt::Display for FreezePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreezePoint::Level(n) => write!(f, "level:{n}"),
            FreezePoint::Epoch(n) => write!(f, "epoch:{n}"),
            FreezePoint::Step(n) => write!(f, "step:{n}"),
            FreezePoint::Never => f.write_str("never"),
        }
    }
}

impl FromStr for FreezePoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const HINT: &str = "expected \"never\", \"level:N\", \"epoch:N\" or \"step:N\"";
        if s == "never" {
            return Ok(FreezePoint::Never);
        }
        let (kind, n) = s.split_once(':').ok_or_else(|| HINT.to_string())?;
        let n: u64 = n.parse().map_err(|_| format!("not a non-negative integer after ':' ({HINT})"))?;
        let small = || u32::try_from(n).map_err(|_| "too large".to_string());
        match kind {
            "level" => Ok(FreezePoint::Level(small()?)),
            "epoch" => Ok(FreezePoint::Epoch(small()?)),
            "step" => Ok(FreezePoint::Step(n)),
            _ => Err(HINT.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_points_round_trip_through_text() {
        for s in ["never", "level:2", "epoch:10", "step:500"] {
            assert_eq!(s.parse::<FreezePoint>().unwrap().to_string(), s);
        }
        assert!("level".parse::<FreezePoint>().is_err());
        assert!("level:-1".parse::<FreezePoint>().is_err());
        assert!("week:2".parse::<FreezePoint>().is_err());
    }

    #[test]
    fn architectures_round_trip_and_a_wrong_name_lists_them_all() {
        for arch in Arch::ALL {
            assert_eq!(arch.to_string().parse::<Arch>(), Ok(arch));
            assert_eq!(serde_json::to_string(&arch).unwrap(), format!("\"{arch}\""));
        }
        let why = "lstm".parse::<Arch>().unwrap_err();
        assert_eq!(why, "unknown architecture (expected one of: rnn, cbrnn, rmrnn, cbgru, gru)");
    }

    #[test]
    fn only_the_control_has_module_units() {
        let control = study_trial(Arch::Rmrnn, 64);
        assert_eq!(control.module_units(), Some(139));
        assert_eq!(control.param_count(), model_size::rnn_params(64) + 37_594);
        for arch in [Arch::Rnn, Arch::Cbrnn, Arch::Cbgru, Arch::Gru] {
            assert_eq!(study_trial(arch, 64).module_units(), None, "{arch}");
        }
    }

    /// A main-comparison cell of `arch` (H as the grid gives it).
    fn study_trial(arch: Arch, hidden: u32) -> TrialSpec {
        TrialSpec {
            sweep: SweepId::from("main-comparison"),
            task: Task::Parity,
            arch,
            hidden,
            granule: 256,
            purkinje: 64,
            seed: Seed(3),
            regime: Regime::Reservoir { freeze: FreezePoint::Level(2) },
            lr_core: 0.01,
            lr_cb: 0.01,
            lr_readout: 0.01,
            core_plasticity: 1.0,
            budget: TrainBudget {
                epochs: 1000,
                steps_per_epoch: 100,
                test_batches: 50,
                batch_size: 64,
                start_level: 2,
                max_level: 150,
                solve_threshold: 0.98,
                momentum: 0.1,
                clip_norm: 7.5,
                curriculum: Curriculum::Climb,
            },
            analysis: AnalysisPlan::study(),
            grid_hidden: STUDY_SIZE,
            gru_cell: GruCell::of(arch),
            module_start: ModuleStart::Lab.of(arch),
        }
    }

    /// The ids of a CB-RNN and an RNN trial as the code before the recurrent-module control and
    /// the GRU (commit 6f2d248) computed them: new architectures must not move existing trials.
    #[test]
    fn existing_trial_ids_are_pinned() {
        assert_eq!(study_trial(Arch::Cbrnn, 64).id().0, "57f068a81b96692166b0");
        assert_eq!(study_trial(Arch::Rnn, 202).id().0, "0bd648415dbe04f0d23f");
    }
}
