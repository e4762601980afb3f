//! Where the desired state comes from: files today (`file`), the EC2 API
//! next. Each source produces the model's input and leaves validation to
//! [`crate::model`].

pub mod file;
