//! Where DataFusion's own functions would change a value's type, ours keep it.
//!
//! `date_trunc` lists its accepted argument types with nanoseconds first, and the
//! type coercion takes the first list a timestamp can be cast to: a microsecond
//! column came out in nanoseconds (a narrower range, a type the sink did not ask
//! for). This one takes a timestamp as it is and leaves the work to DataFusion's.

use std::any::Any;

use arrow_schema::{DataType, TimeUnit};
use datafusion::error::Result;
use datafusion::functions::datetime::date_trunc::DateTruncFunc;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// `date_trunc(granularity, timestamp)` in the timestamp's own unit and zone.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DateTrunc {
    inner: DateTruncFunc,
    signature: Signature,
}

impl ScalarUDFImpl for DateTrunc {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let [granularity, time] = args else {
            return datafusion::common::plan_err!("date_trunc takes a granularity and a timestamp");
        };
        let granularity = match granularity {
            DataType::Utf8View => DataType::Utf8View,
            _ => DataType::Utf8,
        };
        let time = match time {
            DataType::Timestamp(..) => time.clone(),
            _ => DataType::Timestamp(TimeUnit::Nanosecond, None),
        };
        Ok(vec![granularity, time])
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        self.inner.return_type(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.inner.invoke_with_args(args)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// The functions that replace DataFusion's of the same name.
pub(crate) fn replacements() -> Vec<ScalarUDF> {
    vec![ScalarUDF::new_from_impl(DateTrunc {
        inner: DateTruncFunc::new(),
        signature: Signature::user_defined(Volatility::Immutable),
    })]
}
