//! Two entities that reference each other, and one that references itself.
use immu_core::Immutable;
use uuid::Uuid;

#[derive(Immutable)]
#[immu(table = "departments")]
pub struct Department {
    pub name: String,
    #[immu(references = Employee)]
    pub manager_id: Option<Uuid>,
}

#[derive(Immutable)]
#[immu(table = "employees")]
pub struct Employee {
    pub name: String,
    #[immu(references = Department)]
    pub department_id: Uuid,
    #[immu(references = Employee)]
    pub mentor_id: Option<Uuid>,
}

fn main() {
    assert_eq!(Department::TABLE.columns[1].references, Some("employees"));
    assert_eq!(Employee::TABLE.columns[1].references, Some("departments"));
    assert_eq!(Employee::TABLE.columns[2].references, Some("employees"));
}
